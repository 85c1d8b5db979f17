package api

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode"
)

// Tokens maps bearer tokens to tenants. Only SHA-256 digests of the tokens are kept.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	tenant string
	digest [sha256.Size]byte
}

// maxTokenLines bounds a tokens file.
const maxTokenLines = 100_000

// ParseTokens reads a tokens file: one "TENANT TOKEN" per line, where TOKEN is the bearer token
// itself or "sha256:HEX", the hex SHA-256 of the token, so that the file need hold no secret.
// Blank lines and lines starting with '#' are ignored. At most 100,000 lines.
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		if n > maxTokenLines {
			return nil, fmt.Errorf("tokens: more than %d lines", maxTokenLines)
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("tokens line %d: want \"TENANT TOKEN\", got %d fields", n, len(fields))
		}
		digest, err := tokenDigest(fields[1])
		if err != nil {
			return nil, fmt.Errorf("tokens line %d: %w", n, err)
		}
		t.entries = append(t.entries, tokenEntry{tenant: fields[0], digest: digest})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	if len(t.entries) == 0 {
		return nil, fmt.Errorf("tokens: no tokens defined")
	}
	return t, nil
}

// tokenDigest returns the SHA-256 of a token written as itself or as "sha256:HEX".
func tokenDigest(s string) ([sha256.Size]byte, error) {
	hexDigest, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return sha256.Sum256([]byte(s)), nil
	}
	var d [sha256.Size]byte
	b, err := hex.DecodeString(hexDigest)
	if err != nil || len(b) != sha256.Size {
		return d, errors.New("sha256: wants 64 hex digits")
	}
	copy(d[:], b)
	return d, nil
}

// maxMetricsTokenBytes bounds a metrics token file.
const maxMetricsTokenBytes = 4096

// ParseMetricsToken reads the token /metrics requires: the whole file, surrounding whitespace
// trimmed, is the bearer token itself or "sha256:HEX" (so the file Prometheus reads as its
// credentials_file can serve both). At most 4096 bytes.
func ParseMetricsToken(r io.Reader) (*Tokens, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxMetricsTokenBytes+1))
	if err != nil {
		return nil, fmt.Errorf("metrics token: %w", err)
	}
	if len(b) > maxMetricsTokenBytes {
		return nil, fmt.Errorf("metrics token: more than %d bytes", maxMetricsTokenBytes)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsFunc(tok, unicode.IsSpace) {
		return nil, errors.New("metrics token: want one token, without spaces")
	}
	digest, err := tokenDigest(tok)
	if err != nil {
		return nil, fmt.Errorf("metrics token: %w", err)
	}
	return &Tokens{entries: []tokenEntry{{tenant: metricsTenant, digest: digest}}}, nil
}

// metricsTenant is the tenant of a request authenticated with the metrics token.
const metricsTenant = "metrics"

// Tenant returns the tenant a bearer token belongs to. Every entry is compared in constant
// time, so the answer's timing does not depend on which entry (if any) matched.
func (t *Tokens) Tenant(token string) (string, bool) {
	d := sha256.Sum256([]byte(token))
	tenant, found := "", 0
	for _, e := range t.entries {
		eq := subtle.ConstantTimeCompare(d[:], e.digest[:])
		if eq == 1 && found == 0 {
			tenant = e.tenant
		}
		found |= eq
	}
	return tenant, found == 1
}

// openTenant is the tenant of every request when the server runs without tokens.
const openTenant = "local"

type tenantKey struct{}

func tenantOf(ctx context.Context) string {
	t, _ := ctx.Value(tenantKey{}).(string)
	return t
}

// authenticate requires "Authorization: Bearer TOKEN" and puts the token's tenant in the
// request context; with nil tokens every request is tenant "local".
func authenticate(tokens *Tokens, m *metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tenant := openTenant
			if tokens != nil {
				scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
				var ok bool
				if strings.EqualFold(scheme, "Bearer") && token != "" {
					tenant, ok = tokens.Tenant(strings.TrimSpace(token))
				}
				if !ok {
					m.reject("unauthorized")
					w.Header().Set("WWW-Authenticate", `Bearer realm="converter"`)
					problem(w, r, http.StatusUnauthorized, probUnauthorized, "send Authorization: Bearer TOKEN with a valid token")
					return
				}
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, tenant)))
		})
	}
}

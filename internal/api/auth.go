package api

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
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
		e := tokenEntry{tenant: fields[0]}
		if hexDigest, ok := strings.CutPrefix(fields[1], "sha256:"); ok {
			b, err := hex.DecodeString(hexDigest)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("tokens line %d: sha256: wants 64 hex digits", n)
			}
			copy(e.digest[:], b)
		} else {
			e.digest = sha256.Sum256([]byte(fields[1]))
		}
		t.entries = append(t.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	if len(t.entries) == 0 {
		return nil, fmt.Errorf("tokens: no tokens defined")
	}
	return t, nil
}

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

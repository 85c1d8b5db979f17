package api

import (
	"encoding/json"
	"net/http"
)

// problemBase prefixes every problem type; each type names one failure kind and is a stable
// part of the contract (see api/openapi.yaml, Problem.type).
const problemBase = "https://ptsafe.github.io/converter/problems/"

// Problem types.
const (
	probBadRequest          = "bad-request"
	probUnauthorized        = "unauthorized"
	probMisdirected         = "misdirected-request"
	probCrossOrigin         = "cross-origin-request"
	probNotFound            = "not-found"
	probMethodNotAllowed    = "method-not-allowed"
	probConflict            = "job-state-conflict"
	probTooLarge            = "upload-too-large"
	probUnsupportedMedia    = "unsupported-media-type"
	probDigestMismatch      = "digest-mismatch"
	probIdempotencyMismatch = "idempotency-key-reused"
	probTooManyUploads      = "too-many-uploads"
	probInsufficientStorage = "insufficient-storage"
	probUnavailable         = "unavailable"
	probInternal            = "internal"
	probOutputLost          = "output-lost"
	probUploadTimeout       = "upload-timeout"
)

var problemTitles = map[string]string{
	probBadRequest:          "Bad request",
	probUnauthorized:        "Missing or invalid bearer token",
	probMisdirected:         "Request not addressed to this server",
	probCrossOrigin:         "Cross-origin request refused",
	probNotFound:            "Not found",
	probMethodNotAllowed:    "Method not allowed",
	probConflict:            "The job's state does not allow this",
	probTooLarge:            "Upload too large",
	probUnsupportedMedia:    "Unsupported media type",
	probDigestMismatch:      "Upload does not match its Repr-Digest",
	probIdempotencyMismatch: "Idempotency-Key reused with a different request",
	probTooManyUploads:      "Too many uploads in progress",
	probInsufficientStorage: "Not enough storage",
	probUnavailable:         "Service unavailable",
	probInternal:            "Internal error",
	probOutputLost:          "The job's stored output was lost",
	probUploadTimeout:       "Upload stopped arriving",
}

// Problem is an RFC 9457 problem details object.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
}

// problem writes an application/problem+json response of the given kind.
func problem(w http.ResponseWriter, r *http.Request, status int, kind, detail string) {
	p := Problem{
		Type:     problemBase + kind,
		Title:    problemTitles[kind],
		Status:   status,
		Detail:   detail,
		Instance: r.URL.Path,
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(p)
}

// encode writes v as a JSON response.
func encode(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

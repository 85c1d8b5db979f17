package api

import (
	"encoding/json"
	"html/template"
	"net/http"

	"github.com/go-chi/chi/v5"
)

// problemBase prefixes every problem type: a path of this service, which serves a short page
// for each type (handleProblemPage), so that the URIs resolve on whatever host serves the API
// and name no domain we do not own. Each type names one failure kind and is a stable part of the
// contract (see api/openapi.yaml, Problem.type).
const problemBase = "/problems/"

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
	probPathForbidden       = "batch-path-forbidden"
)

// problemType is what a problem type's answers and page say about it.
type problemType struct {
	title string
	about string // the page's explanation: what happened and what to do
}

var problemTypes = map[string]problemType{
	probBadRequest: {"Bad request",
		"A query parameter, header or the upload itself is not acceptable (an unusable file name, an empty upload, an allow_global the server does not allow, an unknown mode). The detail says which; fix the request before sending it again."},
	probUnauthorized: {"Missing or invalid bearer token",
		"Send Authorization: Bearer TOKEN with a token from the server's --tokens file (or, for /metrics, its --metrics-token)."},
	probMisdirected: {"Request not addressed to this server",
		"A server started without --tokens answers only requests whose Host is a loopback name (localhost, 127.0.0.0/8, [::1]), so that a web page cannot reach it through DNS rebinding."},
	probCrossOrigin: {"Cross-origin request refused",
		"A state-changing request a browser sent from another origin is refused, with or without a token. Use the service's own page or a non-browser client."},
	probNotFound: {"Not found",
		"No such resource, or a job of another tenant, which is answered exactly like a missing one."},
	probMethodNotAllowed: {"Method not allowed",
		"The path does not serve this method; the Allow header lists those it serves."},
	probConflict: {"The job's state does not allow this",
		"The job is not in a state that allows the request: an output only exists once a conversion job succeeded, a report once the file was judged, and a finished job cannot be canceled. Poll the job and follow its links."},
	probTooLarge: {"Upload too large",
		"The upload exceeds the server's --max-upload-bytes; nothing was kept."},
	probUnsupportedMedia: {"Unsupported media type",
		"Send the checkpoint's own bytes as application/octet-stream, or as the file part of multipart/form-data, without a Content-Encoding."},
	probDigestMismatch: {"Upload does not match its Repr-Digest",
		"The SHA-256 of the bytes received differs from the one the Repr-Digest header announced; nothing was kept. Send the upload again."},
	probIdempotencyMismatch: {"Idempotency-Key reused with a different request",
		"An Idempotency-Key returns the job of the first request that used it; this request differs from that one (body, filename, select, mode or allowed globals). Use a new key."},
	probTooManyUploads: {"Too many uploads in progress",
		"The server, or your share of it, is receiving as many uploads as it allows; retry after the Retry-After delay."},
	probInsufficientStorage: {"Not enough storage",
		"The server would run short of disk space to take this upload and its output; retry later."},
	probUnavailable: {"Service unavailable",
		"The server is shutting down, or not ready (the detail says why); retry after the Retry-After delay."},
	probInternal: {"Internal error",
		"The server failed; the error is logged. Retry later, and report it if it persists."},
	probOutputLost: {"The job's stored output was lost",
		"A stored file no longer has the digest recorded when it was written, or is missing. It was not served, and the job is now failed with an internal error; upload the checkpoint again."},
	probPathForbidden: {"Batch path not allowed",
		"A batch's source and destination must lie within a root the operator allowed with serve --batch-root: a local path inside one of its directories once every symlink in it is resolved, an s3:// location in the bucket of one of its s3:// roots, at or below that root's prefix on a \"/\" boundary."},
	probUploadTimeout: {"Upload stopped arriving",
		"The upload made no progress for the server's --upload-idle-timeout; its slot was freed and nothing was kept."},
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
		Title:    problemTypes[kind].title,
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

// problemPage is the page a problem type's URI resolves to.
var problemPage = template.Must(template.New("problem").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{.Title}}</title></head>
<body>
<h1>{{.Title}}</h1>
<p>{{.About}}</p>
<p>Problem type <code>{{.Type}}</code> of the converter job service; see <a href="/openapi.yaml">its API description</a>.</p>
</body>
</html>
`))

// handleProblemPage serves the page of the problem type named by the {type} path parameter.
func handleProblemPage() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		kind := chi.URLParam(r, "type")
		pt, ok := problemTypes[kind]
		if !ok {
			problem(w, r, http.StatusNotFound, probNotFound, "no such problem type")
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", "default-src 'none'")
		h.Set("Cache-Control", "public, max-age=86400")
		_ = problemPage.Execute(w, struct{ Title, About, Type string }{pt.title, pt.about, problemBase + kind})
	}
}

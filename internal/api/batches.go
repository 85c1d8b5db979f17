package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
)

// batchRequest is the body of POST /v1/batches (schema BatchRequest).
type batchRequest struct {
	Source      string            `json:"source"`
	Destination string            `json:"destination"`
	Options     jobs.BatchOptions `json:"options"`
}

// maxBatchRequestBytes bounds the body of POST /v1/batches: paths and globs, not data.
const maxBatchRequestBytes = 64 << 10

// batchJSON is a batch as the API shows it (schema Batch).
type batchJSON struct {
	ID          string            `json:"id"`
	State       jobs.State        `json:"state"`
	Source      string            `json:"source"`
	Destination string            `json:"destination"`
	Options     jobs.BatchOptions `json:"options"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	StartedAt   *time.Time        `json:"started_at,omitempty"`
	FinishedAt  *time.Time        `json:"finished_at,omitempty"`
	ExpiresAt   *time.Time        `json:"expires_at,omitempty"`
	Units       unitsJSON         `json:"units"`
	Summary     batch.Summary     `json:"summary"`
	ExitCode    int               `json:"exit_code"`
	Error       *errorJSON        `json:"error,omitempty"`
	Links       batchLinksJSON    `json:"links"`
}

type unitsJSON struct {
	Total int `json:"total"`
	Done  int `json:"done"`
}

type batchLinksJSON struct {
	Self string `json:"self"`
}

// batchReportJSON is a page of a batch's report: the report `converter batch --report`
// writes, with the files of one page (schema BatchReport).
type batchReportJSON struct {
	ConverterVersion string        `json:"converter_version"`
	Source           string        `json:"source"`
	Destination      string        `json:"destination"`
	DryRun           bool          `json:"dry_run"`
	StartedAt        *time.Time    `json:"started_at,omitempty"`
	FinishedAt       *time.Time    `json:"finished_at,omitempty"`
	Summary          batch.Summary `json:"summary"`
	Files            []batch.File  `json:"files"`
}

func batchToJSON(b jobs.Batch) batchJSON {
	out := batchJSON{
		ID: b.ID, State: b.State, Source: b.Source, Destination: b.Destination, Options: b.Options,
		CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt, StartedAt: timePtr(b.StartedAt),
		FinishedAt: timePtr(b.FinishedAt), ExpiresAt: timePtr(b.ExpiresAt),
		Units: unitsJSON{Total: b.Units, Done: b.UnitsDone}, Summary: b.Summary, ExitCode: b.ExitCode,
		Links: batchLinksJSON{Self: "/v1/batches/" + b.ID},
	}
	if b.Error != nil {
		out.Error = &errorJSON{Type: b.Error.Type, Detail: b.Error.Detail}
	}
	return out
}

// batchError answers an error from the job service about a batch.
func batchError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, jobs.ErrNotFound) {
		problem(w, r, http.StatusNotFound, probNotFound, "no such batch")
		return
	}
	jobError(w, r, err)
}

// pathError is a batch location the server refuses, with its status: 400 for a path that is
// not one, 403 for one outside what the operator allows.
type pathError struct {
	status int
	msg    string
}

func (e *pathError) Error() string { return e.msg }

// BatchRoots are where batches may read and write (serve --batch-root): local directories and
// S3 prefixes. A batch names its source and destination with the server's own file system and
// S3 credentials, so whatever no root covers is refused: otherwise any API user could have the
// server read or overwrite everything those reach (a confused deputy). The zero value allows
// nothing.
type BatchRoots struct {
	dirs []string
	s3   []s3Root
}

// s3Root is an S3 root: a bucket and a key prefix, "" or ending in "/" (s3store.ParseLocation).
type s3Root struct{ bucket, prefix string }

// ParseBatchRoots checks and returns the roots: each an absolute path to a directory, or an
// s3://BUCKET[/PREFIX] location whose prefix is a relative path (no empty, "." or ".."
// element).
func ParseBatchRoots(roots []string) (BatchRoots, error) {
	var br BatchRoots
	for _, root := range roots {
		if strings.HasPrefix(root, "s3://") {
			bucket, prefix, err := s3store.ParseLocation(root)
			if err != nil {
				return BatchRoots{}, fmt.Errorf("--batch-root %s: %w", root, err)
			}
			br.s3 = append(br.s3, s3Root{bucket, prefix})
			continue
		}
		if st, err := os.Stat(root); err != nil || !st.IsDir() || !filepath.IsAbs(root) {
			return BatchRoots{}, fmt.Errorf("--batch-root %s must be an absolute path to a directory or an s3://BUCKET/PREFIX", root)
		}
		br.dirs = append(br.dirs, root)
	}
	return br, nil
}

// Excludes returns an error naming the first root that holds, or lies within, the data
// directory dataDir or the S3 store (s3://BUCKET/PREFIX, "" for none): a batch could read and
// overwrite every tenant's jobs through it.
func (br BatchRoots) Excludes(dataDir, store string) error {
	data := resolved(dataDir)
	for _, dir := range br.dirs {
		if d := resolved(dir); within(data, d) || within(d, data) {
			return fmt.Errorf("--batch-root %s and the data directory %s overlap: batches could reach every job's files", dir, dataDir)
		}
	}
	if store == "" {
		return nil
	}
	bucket, prefix, err := s3store.ParseLocation(store)
	if err != nil {
		return err
	}
	for _, r := range br.s3 {
		if bucket == r.bucket && (strings.HasPrefix(prefix, r.prefix) || strings.HasPrefix(r.prefix, prefix)) {
			return fmt.Errorf("--batch-root s3://%s/%s and --store %s overlap: batches could reach every job's files", r.bucket, r.prefix, store)
		}
	}
	return nil
}

// batchLocation checks a batch's source or destination: an s3:// prefix within one of the S3
// roots, or an absolute local path inside one of the directories once every symlink is
// resolved. It returns the location to record: a local path resolved, so that a symlink
// changed later cannot move it.
func (br BatchRoots) batchLocation(what, loc string) (string, error) {
	if strings.HasPrefix(loc, "s3://") {
		return loc, br.s3Location(what, loc)
	}
	if !filepath.IsAbs(loc) {
		return "", &pathError{http.StatusBadRequest, what + " must be an s3:// prefix or an absolute path"}
	}
	if slices.Contains(strings.Split(filepath.ToSlash(loc), "/"), "..") {
		return "", &pathError{http.StatusBadRequest, what + " must not contain .."}
	}
	if len(br.dirs) == 0 {
		return "", &pathError{http.StatusForbidden, "this server takes no local paths (serve --batch-root DIR)"}
	}
	tree, err := store.NewLocal(loc)
	if err != nil {
		return "", &pathError{http.StatusBadRequest, what + " is not a directory"}
	}
	real := tree.Root()
	for _, root := range br.dirs {
		if rr, err := filepath.EvalSymlinks(root); err == nil && within(real, rr) {
			return real, nil
		}
	}
	return "", &pathError{http.StatusForbidden, what + " is outside every --batch-root, once its symlinks are resolved"}
}

// s3Location checks an s3:// location against the S3 roots: the same bucket, and a prefix
// equal to the root's or below it on a "/" boundary (s3://b/models admits s3://b/models/x,
// not s3://b/models2).
func (br BatchRoots) s3Location(what, loc string) error {
	bucket, prefix, err := s3store.ParseLocation(loc)
	if err != nil {
		var fe *fault.Error
		if errors.As(err, &fe) {
			err = errors.New(fe.Msg) // the location, not the fault's kind
		}
		return &pathError{http.StatusBadRequest, what + " " + loc + ": " + err.Error()}
	}
	if len(br.s3) == 0 {
		return &pathError{http.StatusForbidden, "this server takes no s3:// locations (serve --batch-root s3://BUCKET/PREFIX)"}
	}
	for _, r := range br.s3 {
		if bucket == r.bucket && strings.HasPrefix(prefix, r.prefix) {
			return nil
		}
	}
	return &pathError{http.StatusForbidden, what + " is outside every s3:// --batch-root"}
}

// resolved is p with its symlinks resolved, or p itself when that fails (it does not exist yet).
func resolved(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// within reports whether the absolute path p is dir or below it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// decodeBatchRequest reads a POST /v1/batches body: one JSON object of known fields, in at
// most maxBatchRequestBytes (a longer body is refused, not cut short).
func decodeBatchRequest(w http.ResponseWriter, r *http.Request) (batchRequest, error) {
	var req batchRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBatchRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("the body is not a batch request: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, errors.New("the body holds more than one JSON value")
	}
	if req.Source == "" || req.Destination == "" {
		return req, errors.New("source and destination are required")
	}
	// Every file of SOURCE is matched against every glob: their number and length bound what
	// one request costs the planning node.
	if n := len(req.Options.Include) + len(req.Options.Exclude); n > maxBatchGlobs {
		return req, fmt.Errorf("%d include and exclude globs; at most %d", n, maxBatchGlobs)
	}
	for _, g := range slices.Concat(req.Options.Include, req.Options.Exclude) {
		if len(g) > maxBatchGlobBytes {
			return req, fmt.Errorf("a glob of %d bytes; at most %d", len(g), maxBatchGlobBytes)
		}
	}
	return req, nil
}

// The most include and exclude globs a batch request may give, and the longest.
const (
	maxBatchGlobs     = 64
	maxBatchGlobBytes = 1024
)

func handleSubmitBatch(svc JobService, roots BatchRoots, allowed map[string]bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
			problem(w, r, http.StatusUnsupportedMediaType, probUnsupportedMedia, "send the batch request as application/json")
			return
		}
		req, err := decodeBatchRequest(w, r)
		if err != nil {
			problem(w, r, http.StatusBadRequest, probBadRequest, err.Error())
			return
		}
		var pe *pathError
		src, err := roots.batchLocation("source", req.Source)
		if errors.As(err, &pe) {
			problem(w, r, pe.status, pathProblem(pe.status), pe.msg)
			return
		}
		dst, err := roots.batchLocation("destination", req.Destination)
		if errors.As(err, &pe) {
			problem(w, r, pe.status, pathProblem(pe.status), pe.msg)
			return
		}
		o := req.Options
		if o.AllowGlobals, err = checkAllowed(o.AllowGlobals, allowed); err != nil {
			problem(w, r, http.StatusBadRequest, probBadRequest, err.Error())
			return
		}
		bo := batch.Options{Include: o.Include, Exclude: o.Exclude, Convert: convert.Options{AllowGlobals: o.AllowGlobals}}
		if err := bo.Validate(); err != nil {
			problem(w, r, http.StatusBadRequest, probBadRequest, err.Error())
			return
		}
		b, err := svc.SubmitBatch(r.Context(), jobs.BatchParams{Tenant: tenantOf(r.Context()), Source: src, Destination: dst, Options: o})
		if err != nil {
			batchError(w, r, err)
			return
		}
		w.Header().Set("Location", "/v1/batches/"+b.ID)
		encode(w, http.StatusAccepted, batchToJSON(b))
	}
}

func pathProblem(status int) string {
	if status == http.StatusForbidden {
		return probPathForbidden
	}
	return probBadRequest
}

// pageParams reads page_size and page_token; a token is what encodeToken made of after.
func pageParams(w http.ResponseWriter, r *http.Request, valid func(string) bool) (size int, after string, ok bool) {
	q := r.URL.Query()
	size = defaultPageSize
	if s := q.Get("page_size"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPageSize {
			problem(w, r, http.StatusBadRequest, probBadRequest, fmt.Sprintf("page_size must be 1..%d", maxPageSize))
			return 0, "", false
		}
		size = n
	}
	if s := q.Get("page_token"); s != "" {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || !valid(string(b)) {
			problem(w, r, http.StatusBadRequest, probBadRequest, "page_token is not one this server issued")
			return 0, "", false
		}
		after = string(b)
	}
	return size, after, true
}

func encodeToken(after string) string { return base64.RawURLEncoding.EncodeToString([]byte(after)) }

func handleGetBatch(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := resourceID(w, r, "batch")
		if !ok {
			return
		}
		size, after, ok := pageParams(w, r, func(string) bool { return true })
		if !ok {
			return
		}
		ctx := r.Context()
		b, err := svc.GetBatch(ctx, tenantOf(ctx), id)
		if err != nil {
			batchError(w, r, err)
			return
		}
		files, more, err := svc.BatchFiles(ctx, tenantOf(ctx), id, after, size)
		if err != nil {
			batchError(w, r, err)
			return
		}
		resp := struct {
			batchJSON
			Report        batchReportJSON `json:"report"`
			NextPageToken string          `json:"next_page_token,omitempty"`
		}{batchJSON: batchToJSON(b), Report: batchReportJSON{
			ConverterVersion: convert.Version, Source: b.Source, Destination: b.Destination, DryRun: b.Options.DryRun,
			StartedAt: timePtr(b.StartedAt), FinishedAt: timePtr(b.FinishedAt), Summary: b.Summary, Files: files,
		}}
		if more {
			resp.NextPageToken = encodeToken(files[len(files)-1].Path)
		}
		if !b.State.Terminal() {
			w.Header().Set("Retry-After", "1")
		}
		encode(w, http.StatusOK, resp)
	}
}

func handleListBatches(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := listParams(w, r)
		if !ok {
			return
		}
		list, more, err := svc.ListBatches(r.Context(), p)
		if err != nil {
			batchError(w, r, err)
			return
		}
		encodePage(w, "batches", list, batchToJSON, more, func(b jobs.Batch) string { return b.ID })
	}
}

func handleCancelBatch(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := resourceID(w, r, "batch")
		if !ok {
			return
		}
		b, err := svc.CancelBatch(r.Context(), tenantOf(r.Context()), id)
		if errors.Is(err, jobs.ErrConflict) {
			problem(w, r, http.StatusConflict, probConflict, "the batch already "+string(b.State))
			return
		}
		if err != nil {
			batchError(w, r, err)
			return
		}
		encode(w, http.StatusOK, batchToJSON(b))
	}
}

func handleDeleteBatch(svc JobService) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := resourceID(w, r, "batch")
		if !ok {
			return
		}
		if err := svc.DeleteBatch(r.Context(), tenantOf(r.Context()), id); err != nil {
			batchError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

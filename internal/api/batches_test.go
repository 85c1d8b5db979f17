package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/testkit"
)

type batchResp struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Source   string `json:"source"`
	ExitCode int    `json:"exit_code"`
	Units    struct {
		Total, Done int
	} `json:"units"`
	Summary struct {
		Converted, Copied, Refused, Failed, Skipped int
	} `json:"summary"`
	Error *struct {
		Type string `json:"type"`
	} `json:"error"`
	Report struct {
		Files []struct {
			Path    string `json:"path"`
			Outcome string `json:"outcome"`
		} `json:"files"`
	} `json:"report"`
	NextPageToken string `json:"next_page_token"`
}

// batchBody is a POST /v1/batches body.
func batchBody(t *testing.T, v any) *bytes.Reader {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b)
}

var jsonType = map[string]string{"Content-Type": "application/json"}

func (e *env) submitBatch(src, dst string, options map[string]any) batchResp {
	e.t.Helper()
	resp, b := e.do("POST", "/v1/batches", "", batchBody(e.t, map[string]any{"source": src, "destination": dst, "options": options}), jsonType)
	return accepted(e, resp, b, "/v1/batches", func(bt batchResp) string { return bt.ID })
}

// waitBatch polls a batch until it is finished, a bounded number of times.
func (e *env) waitBatch(id string) batchResp {
	e.t.Helper()
	return waitFinished(e, "/v1/batches/"+id, "", 2400, func(b batchResp) string { return b.State })
}

// batchFiles pages through a batch's report, three files a page.
func (e *env) batchFiles(id string) map[string]string {
	e.t.Helper()
	got := map[string]string{}
	token := ""
	for {
		resp, b := e.do("GET", "/v1/batches/"+id+"?page_size=3&page_token="+token, "", nil, nil)
		if resp.StatusCode != http.StatusOK {
			e.t.Fatalf("GET batch page = %d\n%s", resp.StatusCode, b)
		}
		bt := decode[batchResp](e.t, b)
		for _, f := range bt.Report.Files {
			got[f.Path] = f.Outcome
		}
		if token = bt.NextPageToken; token == "" {
			return got
		}
	}
}

func (e *env) checkBatchRepo(bt batchResp) {
	e.t.Helper()
	if bt.State != "failed" || bt.ExitCode != 3 || bt.Error == nil || bt.Error.Type != "unsafe" ||
		bt.Summary.Converted != 6 || bt.Summary.Copied != 6 || bt.Summary.Refused != 1 || bt.Units.Done != bt.Units.Total {
		e.t.Errorf("batch = %+v, want failed as unsafe (exit 3): 6 converted, 6 copied, 1 refused, every unit done", bt)
	}
	got := e.batchFiles(bt.ID)
	for p, want := range testkit.BatchRepoOutcomes {
		if got[p] != want {
			e.t.Errorf("%s: %q, want %q", p, got[p], want)
		}
	}
	if len(got) != len(testkit.BatchRepoOutcomes) {
		e.t.Errorf("%d files reported, want %d", len(got), len(testkit.BatchRepoOutcomes))
	}
}

// Batches through the API, on SQLite and PostgreSQL: S3 to S3 and local to local, each a
// mixed tree with a malicious checkpoint; then the list, cancel and delete.
func TestBatches(t *testing.T) {
	for _, backend := range []struct {
		name     string
		database func(t *testing.T) string
	}{
		{"sqlite", func(*testing.T) string { return "" }},
		{"postgres", func(t *testing.T) string { return testkit.StartPostgres(t) }},
	} {
		t.Run(backend.name, func(t *testing.T) {
			srv := testkit.StartS3(t)
			bucket := "s3://" + srv.Bucket(t)
			s3cfg := s3store.Config{Endpoint: srv.Endpoint, Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")}
			root := t.TempDir()
			e := newEnv(t, envOpts{database: backend.database(t), batchRoots: []string{root, bucket}, storeConfig: s3cfg, workers: 2})

			src, err := s3store.New(t.Context(), bucket+"/src", s3cfg)
			if err != nil {
				t.Fatal(err)
			}
			testkit.PutDir(t, src, testkit.BatchRepo(t, t.TempDir()))
			remote := e.submitBatch(bucket+"/src", bucket+"/dst", nil)
			e.checkBatchRepo(e.waitBatch(remote.ID))

			local := e.submitBatch(testkit.BatchRepo(t, filepath.Join(root, "src")), filepath.Join(root, "dst"), map[string]any{"force": true})
			e.checkBatchRepo(e.waitBatch(local.ID))
			if _, err := os.Stat(filepath.Join(root, "dst", "model.safetensors.index.json")); err != nil {
				t.Errorf("local DEST: %v", err)
			}

			resp, b := e.do("GET", "/v1/batches?page_size=1", "", nil, nil)
			page := decode[struct {
				Batches       []batchResp `json:"batches"`
				NextPageToken string      `json:"next_page_token"`
			}](t, b)
			if resp.StatusCode != http.StatusOK || len(page.Batches) != 1 || page.Batches[0].ID != local.ID || page.NextPageToken == "" {
				t.Fatalf("GET /v1/batches?page_size=1 = %d %+v, want the newest batch and a next page", resp.StatusCode, page)
			}
			_, b = e.do("GET", "/v1/batches?page_size=1&page_token="+page.NextPageToken, "", nil, nil)
			if page := decode[struct{ Batches []batchResp }](t, b); len(page.Batches) != 1 || page.Batches[0].ID != remote.ID {
				t.Errorf("second page = %+v, want the first batch", page)
			}
			if resp, _ := e.do("GET", "/v1/batches?state=succeeded", "", nil, nil); resp.StatusCode != http.StatusOK {
				t.Errorf("GET /v1/batches?state=succeeded = %d", resp.StatusCode)
			}

			if _, m := e.do("GET", "/metrics", "", nil, nil); !strings.Contains(string(m), `converter_batches_finished_total{state="failed"} 2`) {
				t.Errorf("metrics do not count the two failed batches:\n%s", m)
			}
			if resp, b := e.do("POST", "/v1/batches/"+local.ID+"/cancel", "", nil, nil); resp.StatusCode != http.StatusConflict {
				t.Errorf("cancel a finished batch = %d, want 409\n%s", resp.StatusCode, b)
			}
			if resp, b := e.do("DELETE", "/v1/batches/"+local.ID, "", nil, nil); resp.StatusCode != http.StatusNoContent {
				t.Errorf("DELETE batch = %d, want 204\n%s", resp.StatusCode, b)
			}
			if resp, _ := e.do("GET", "/v1/batches/"+local.ID, "", nil, nil); resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET a deleted batch = %d, want 404", resp.StatusCode)
			}
		})
	}
}

// A batch whose conversion runs is canceled through the API.
func TestBatchCancelAPI(t *testing.T) {
	root := t.TempDir()
	started := make(chan string, 16)
	e := newEnv(t, envOpts{batchRoots: []string{root}, converter: blockingConverter{started: started}})
	bt := e.submitBatch(testkit.BatchRepo(t, filepath.Join(root, "src")), filepath.Join(root, "dst"), nil)
	<-started
	resp, b := e.do("POST", "/v1/batches/"+bt.ID+"/cancel", "", nil, nil)
	if got := decode[batchResp](t, b); resp.StatusCode != http.StatusOK || got.State != "canceled" || got.Error == nil || got.Error.Type != "canceled" {
		t.Errorf("cancel = %d %+v, want 200 canceled", resp.StatusCode, got)
	}
}

// Requests the server refuses: local paths outside --batch-root (through .., a symlink, or
// plainly), paths that are not paths, options it does not know or allow.
func TestBatchRefusals(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	src := filepath.Join(root, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{batchRoots: []string{root}, allowGlobals: []string{"mylib.Config"}})
	open := newEnv(t, envOpts{})
	dst := filepath.Join(root, "dst")
	for _, tc := range []struct {
		name   string
		env    *env
		body   string
		ctype  string
		status int
		kind   string
	}{
		{"source outside every root", e, `{"source": "` + outside + `", "destination": "` + dst + `"}`, "", 403, "batch-path-forbidden"},
		{"destination through a symlink out", e, `{"source": "` + src + `", "destination": "` + filepath.Join(root, "escape", "dst") + `"}`, "", 403, "batch-path-forbidden"},
		{"source with ..", e, `{"source": "` + root + `/src/../../x", "destination": "` + dst + `"}`, "", 400, "bad-request"},
		{"relative source", e, `{"source": "src", "destination": "` + dst + `"}`, "", 400, "bad-request"},
		{"no destination", e, `{"source": "` + src + `"}`, "", 400, "bad-request"},
		{"s3 without a bucket", e, `{"source": "s3:///x", "destination": "` + dst + `"}`, "", 400, "bad-request"},
		{"local path on a server without roots", open, `{"source": "` + src + `", "destination": "s3://b/x"}`, "", 403, "batch-path-forbidden"},
		{"unknown field", e, `{"source": "` + src + `", "destination": "` + dst + `", "workers": 4}`, "", 400, "bad-request"},
		{"remove_source", e, `{"source": "` + src + `", "destination": "` + dst + `", "options": {"remove_source": true}}`, "", 400, "bad-request"},
		{"a global the server does not allow", e, `{"source": "` + src + `", "destination": "` + dst + `", "options": {"allow_globals": ["os.system"]}}`, "", 400, "bad-request"},
		{"a bad glob", e, `{"source": "` + src + `", "destination": "` + dst + `", "options": {"include": ["[a"]}}`, "", 400, "bad-request"},
		{"too many globs", e, `{"source": "` + src + `", "destination": "` + dst + `", "options": {"exclude": [` + strings.TrimSuffix(strings.Repeat(`"*.x",`, 65), ",") + `]}}`, "", 400, "bad-request"},
		{"a glob too long", e, `{"source": "` + src + `", "destination": "` + dst + `", "options": {"include": ["` + strings.Repeat("a", 1025) + `"]}}`, "", 400, "bad-request"},
		{"over the size limit, past where it parses", e, `{"source": "s3://b/x", "destination": "s3://b/y"}` + strings.Repeat(" ", 64<<10), "", 400, "bad-request"},
		{"two values", e, `{"source": "s3://b/x", "destination": "s3://b/y"} {}`, "", 400, "bad-request"},
		{"not JSON", e, `source=x`, "application/x-www-form-urlencoded", 415, "unsupported-media-type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctype := tc.ctype
			if ctype == "" {
				ctype = "application/json"
			}
			resp, b := tc.env.doInvalid("POST", "/v1/batches", "", strings.NewReader(tc.body), map[string]string{"Content-Type": ctype})
			p := decode[struct{ Type string }](t, b)
			if resp.StatusCode != tc.status || p.Type != "/problems/"+tc.kind {
				t.Errorf("POST /v1/batches = %d %s, want %d %s\n%s", resp.StatusCode, p.Type, tc.status, tc.kind, b)
			}
		})
	}
	// The server's allowed global is admitted, and recorded sorted.
	bt := e.submitBatch(src, dst, map[string]any{"allow_globals": []string{"mylib.Config", "mylib.Config"}, "dry_run": true})
	if bt.Source != src {
		t.Errorf("source recorded as %q, want %q", bt.Source, src)
	}
}

// S3 locations against the server's s3:// roots: the same bucket, and a prefix at or below the
// root's on a "/" boundary; a prefix that is no relative path is a 400 whatever the roots.
func TestBatchS3Roots(t *testing.T) {
	srv := testkit.StartS3(t)
	models, scratch := srv.Bucket(t), srv.Bucket(t)
	s3cfg := s3store.Config{Endpoint: srv.Endpoint, Credentials: srv.Credentials()}
	e := newEnv(t, envOpts{batchRoots: []string{"s3://" + models + "/hub", "s3://" + scratch}, storeConfig: s3cfg})
	localOnly := newEnv(t, envOpts{batchRoots: []string{t.TempDir()}})
	out := "s3://" + scratch + "/out"
	for _, tc := range []struct {
		name        string
		env         *env
		source, dst string
		status      int
		kind        string
	}{
		{"the root itself", e, "s3://" + models + "/hub", out, 202, ""},
		{"the root with a trailing slash", e, "s3://" + models + "/hub/", out, 202, ""},
		{"below the root", e, "s3://" + models + "/hub/org/llama", out, 202, ""},
		{"anywhere in a bucket that is a root", e, "s3://" + scratch + "/a/b", out, 202, ""},
		{"a sibling sharing the root's letters", e, "s3://" + models + "/hub2", out, 403, "batch-path-forbidden"},
		{"a prefix of the root's prefix", e, "s3://" + models + "/hu", out, 403, "batch-path-forbidden"},
		{"above the root", e, "s3://" + models, out, 403, "batch-path-forbidden"},
		{"another bucket", e, "s3://other/hub", out, 403, "batch-path-forbidden"},
		{"a bucket named like a root's prefix", e, "s3://" + models + "-hub/x", out, 403, "batch-path-forbidden"},
		{"a destination outside every root", e, "s3://" + models + "/hub", "s3://other/out", 403, "batch-path-forbidden"},
		{"out of the root through ..", e, "s3://" + models + "/hub/../secret", out, 400, "bad-request"},
		{"an empty segment", e, "s3://" + models + "/hub//x", out, 400, "bad-request"},
		{"a . segment", e, "s3://" + models + "/./hub", out, 400, "bad-request"},
		{"a destination with ..", e, "s3://" + scratch, "s3://" + scratch + "/a/../b", 400, "bad-request"},
		{"s3 on a server with local roots only", localOnly, "s3://" + models + "/hub", out, 403, "batch-path-forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.status == http.StatusAccepted {
				if bt := tc.env.submitBatch(tc.source, tc.dst, nil); bt.Source != tc.source {
					t.Errorf("source recorded as %q, want %q", bt.Source, tc.source)
				}
				return
			}
			body := batchBody(t, map[string]any{"source": tc.source, "destination": tc.dst})
			resp, b := tc.env.doInvalid("POST", "/v1/batches", "", body, jsonType)
			p := decode[struct{ Type, Detail string }](t, b)
			if resp.StatusCode != tc.status || p.Type != "/problems/"+tc.kind {
				t.Errorf("POST /v1/batches = %d %s, want %d %s\n%s", resp.StatusCode, p.Type, tc.status, tc.kind, b)
			}
			if tc.env == localOnly && !strings.Contains(p.Detail, "--batch-root s3://") {
				t.Errorf("detail %q does not name the flag that allows S3", p.Detail)
			}
		})
	}
}

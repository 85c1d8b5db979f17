package api_test

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/convert"
)

// evilPickle is a bare pickle whose load would run a shell command; it is only parsed.
var evilPickle = []byte("cos\nsystem\n(S'touch /tmp/pwned-by-converter-test'\ntR.")

// reportResp is the part of the Manifest schema these tests read.
type reportResp struct {
	Verdict string `json:"verdict"`
	Error   *struct {
		Type string `json:"type"`
	} `json:"error"`
	Globals []struct {
		Module string `json:"module"`
		Name   string `json:"name"`
		Offset int64  `json:"offset"`
		Class  string `json:"class"`
	} `json:"globals"`
	Output *struct{} `json:"output"`
}

// get fetches path and requires status want.
func (e *env) get(path string, want int) []byte {
	e.t.Helper()
	resp, b := e.do("GET", path, "", nil, nil)
	if resp.StatusCode != want {
		e.t.Fatalf("GET %s = %d, want %d\n%s", path, resp.StatusCode, want, b)
	}
	return b
}

// A refused conversion's job links to the report of its file, which names the offending global
// and its offset; it has no output, and no manifest.
func TestRefusedJobReport(t *testing.T) {
	e := newEnv(t, envOpts{})
	j := e.wait("", e.submit("", "evil.pt", evilPickle, nil).ID)
	if j.State != "failed" || j.Links.Self != "/v1/jobs/"+j.ID || j.Links.Output != "" || j.Links.Report != "/v1/jobs/"+j.ID+"/report" {
		t.Fatalf("job = %s, links %+v; want failed, linking itself and its report only", j.State, j.Links)
	}
	rep := decode[reportResp](t, e.get(j.Links.Report, http.StatusOK))
	if rep.Verdict != "unsafe" || rep.Error == nil || rep.Error.Type != "unsafe" {
		t.Errorf("report verdict %q error %+v, want unsafe", rep.Verdict, rep.Error)
	}
	if !slices.ContainsFunc(rep.Globals, func(g struct {
		Module string `json:"module"`
		Name   string `json:"name"`
		Offset int64  `json:"offset"`
		Class  string `json:"class"`
	}) bool {
		return g.Module == "os" && g.Name == "system" && g.Class == "dangerous" && g.Offset == 0
	}) {
		t.Errorf("report globals = %+v, want os.system, dangerous, at offset 0", rep.Globals)
	}
	e.get("/v1/jobs/"+j.ID+"/manifest", http.StatusConflict)
}

// A scan job succeeds whatever the verdict, with a report and no output; a conversion's
// report is its manifest.
func TestScanJobAndLinks(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, b := e.do("POST", "/v1/jobs?mode=scan&filename=evil.pt", "", bytes.NewReader(evilPickle),
		map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST mode=scan = %d\n%s", resp.StatusCode, b)
	}
	j := e.wait("", decode[jobResp](t, b).ID)
	if j.State != "succeeded" || j.Mode != "scan" || j.Output != nil || j.Links.Output != "" || j.Links.Report == "" {
		t.Fatalf("scan job = %s mode %s output %v links %+v; want a succeeded scan with a report and no output", j.State, j.Mode, j.Output, j.Links)
	}
	if rep := decode[reportResp](t, e.get(j.Links.Report, http.StatusOK)); rep.Verdict != "unsafe" || rep.Output != nil {
		t.Errorf("scan report verdict %q output %v, want unsafe without output", rep.Verdict, rep.Output)
	}
	e.get("/v1/jobs/"+j.ID+"/output", http.StatusConflict)

	c := e.wait("", e.submit("", "mymodel.pt", fixture(t, "mymodel.pt"), nil).ID)
	if c.State != "succeeded" || c.Mode != "convert" || c.Links.Output != "/v1/jobs/"+c.ID+"/output" {
		t.Fatalf("conversion = %s mode %s links %+v, want succeeded with an output link", c.State, c.Mode, c.Links)
	}
	if !bytes.Equal(e.get(c.Links.Report, http.StatusOK), e.get("/v1/jobs/"+c.ID+"/manifest", http.StatusOK)) {
		t.Errorf("a conversion's report differs from its manifest")
	}
}

// A job may ask to admit only globals from the server's list; the job shows those it admits.
func TestAllowGlobalQuery(t *testing.T) {
	e := newEnv(t, envOpts{allowGlobals: []string{"mylib.Config", "mylib.Schedule"},
		converter: blockingConverter{started: make(chan string, 16)}})
	cases := []struct {
		query  string
		status int
		want   []string
	}{
		{"allow_global=mylib.Schedule&allow_global=mylib.Config&allow_global=mylib.Config", http.StatusAccepted, []string{"mylib.Config", "mylib.Schedule"}},
		{"allow_global=os.system", http.StatusBadRequest, nil},
		{"allow_global=mylib.Other", http.StatusBadRequest, nil},
		{"mode=dry-run", http.StatusBadRequest, nil},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			resp, b := e.doInvalid("POST", "/v1/jobs?filename=a.pt&"+c.query, "", strings.NewReader("bytes"),
				map[string]string{"Content-Type": "application/octet-stream"})
			if resp.StatusCode != c.status {
				t.Fatalf("status = %d, want %d\n%s", resp.StatusCode, c.status, b)
			}
			if c.status == http.StatusAccepted {
				if got := decode[jobResp](t, b).AllowGlobals; !slices.Equal(got, c.want) {
					t.Errorf("allow_globals = %q, want %q", got, c.want)
				}
			} else if p := decode[problemResp](t, b); p.Type != "/problems/bad-request" {
				t.Errorf("problem type = %q, want /problems/bad-request", p.Type)
			}
		})
	}
}

// A running job is served with its converter's progress (the blocking converter reports one
// record before it blocks).
func TestRunningJobProgress(t *testing.T) {
	conv := blockingConverter{started: make(chan string, 16)}
	e := newEnv(t, envOpts{converter: conv})
	j := e.submit("", "a.pt", []byte("bytes"), nil)
	<-conv.started
	got := decode[jobResp](t, e.get("/v1/jobs/"+j.ID, http.StatusOK))
	want := convert.Progress{Phase: convert.PhaseWriting, BytesDone: 1, BytesTotal: 2, TensorsDone: 3, TensorsTotal: 4}
	if got.State != "running" || got.Progress == nil || *got.Progress != want {
		t.Errorf("running job = %s with progress %+v, want running with %+v", got.State, got.Progress, want)
	}
}

// Every problem type the contract lists resolves to a page on the service; others are 404.
func TestProblemPages(t *testing.T) {
	e := newEnv(t, envOpts{})
	types := loadSpec(t).Components.Schemas["Problem"].Value.Properties["type"].Value.Enum
	if len(types) == 0 {
		t.Fatal("the Problem schema lists no types")
	}
	for _, ty := range types {
		resp, b := e.do("GET", ty.(string), "", nil, nil)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
			!strings.Contains(string(b), "<h1>") {
			t.Errorf("GET %s = %d %s\n%s", ty, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
	}
	e.get("/problems/no-such-problem", http.StatusNotFound)
}

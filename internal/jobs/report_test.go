package jobs_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/jobs"
	"github.com/ptsafe/converter/internal/unpickler"
)

// systemPickle is a bare pickle whose load would call os.system("id"); it is only parsed.
const systemPickle = "\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."

func submitParams(t *testing.T, s *jobs.Service, body string, p jobs.SubmitParams) jobs.Job {
	t.Helper()
	up, err := s.Stage(t.Context(), strings.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	p.Tenant, p.Filename, p.Upload = "t", "m.pt", up
	j, _, err := s.Submit(t.Context(), p)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	return j
}

// readReport opens a job's report and decodes it.
func readReport(t *testing.T, s *jobs.Service, id string) convert.Manifest {
	t.Helper()
	_, a, err := s.OpenReport(t.Context(), "t", id)
	if err != nil {
		t.Fatalf("OpenReport: %v", err)
	}
	defer a.Close()
	var m convert.Manifest
	b, _ := io.ReadAll(a)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("report: %v\n%s", err, b)
	}
	return m
}

// hasGlobal reports whether the report lists module.name.
func hasGlobal(m convert.Manifest, qualified string) bool {
	return slices.ContainsFunc(m.Globals, func(g convert.GlobalRef) bool { return g.Qualified() == qualified })
}

// A scan job succeeds with its report whatever the verdict, and has no output.
func TestScanJob(t *testing.T) {
	s := open(t, t.TempDir(), convert.InProcess{}, 0)
	j := waitFor(t, s, submitParams(t, s, systemPickle, jobs.SubmitParams{Mode: jobs.ModeScan}).ID, "finished", terminal)
	if j.State != jobs.StateSucceeded || j.Mode != jobs.ModeScan || j.Error != nil {
		t.Fatalf("scan job = %s %s %+v, want a succeeded scan", j.State, j.Mode, j.Error)
	}
	m := readReport(t, s, j.ID)
	if m.Verdict != "unsafe" || m.Output != nil || m.Source.Path != "m.pt" || !hasGlobal(m, "os.system") {
		t.Errorf("report = verdict %s, output %v, source %q, globals %+v; want unsafe, none, m.pt, os.system", m.Verdict, m.Output, m.Source.Path, m.Globals)
	}
	if _, _, err := s.OpenOutput(t.Context(), "t", j.ID); !errors.Is(err, jobs.ErrConflict) {
		t.Errorf("OpenOutput of a scan job = %v, want ErrConflict", err)
	}
}

// A conversion refused as unsafe keeps the scan report of its file: which global, where. One
// that never reached a verdict (canceled) has none.
func TestRefusedConversionKeepsReport(t *testing.T) {
	s := open(t, t.TempDir(), convert.InProcess{}, 0)
	j := waitFor(t, s, submit(t, s, systemPickle).ID, "finished", terminal)
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Type != fault.Unsafe {
		t.Fatalf("job = %s %+v, want failed unsafe", j.State, j.Error)
	}
	m := readReport(t, s, j.ID)
	if m.Verdict != "unsafe" || m.Error == nil || !hasGlobal(m, "os.system") {
		t.Errorf("report = verdict %s, error %+v, globals %+v; want unsafe naming os.system", m.Verdict, m.Error, m.Globals)
	}
	if _, _, err := s.OpenManifest(t.Context(), "t", j.ID); !errors.Is(err, jobs.ErrConflict) {
		t.Errorf("OpenManifest of a failed job = %v, want ErrConflict", err)
	}

	blocked := open(t, t.TempDir(), converterFunc(func(ctx context.Context, _, _ string, _ convert.Options) (*convert.Manifest, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}), 0)
	c := submit(t, blocked, "x")
	if _, err := blocked.Cancel(t.Context(), "t", c.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := blocked.OpenReport(t.Context(), "t", c.ID); !errors.Is(err, jobs.ErrNoReport) {
		t.Errorf("OpenReport of a canceled job = %v, want ErrNoReport", err)
	}
}

// refusingConverter refuses every file as unsafe with a report of its own, and must never be
// asked to scan: a refused conversion's report is the converter's, not a second scan's.
type refusingConverter struct{ t *testing.T }

func (refusingConverter) Convert(context.Context, string, string, convert.Options) (*convert.Manifest, error) {
	m := &convert.Manifest{Verdict: "unsafe", Globals: []convert.GlobalRef{{Global: unpickler.Global{Module: "mylib", Name: "Refused", Class: unpickler.Unknown}}}}
	return m, fault.New(fault.Unsafe, "", "global mylib.Refused is not allowed")
}

func (c refusingConverter) Scan(context.Context, string, convert.Options) (*convert.Manifest, error) {
	c.t.Error("the service scanned a file its conversion had refused")
	return nil, errors.New("no scan")
}

func TestRefusedReportIsTheConversions(t *testing.T) {
	s := open(t, t.TempDir(), refusingConverter{t}, 0)
	j := waitFor(t, s, submit(t, s, "x").ID, "finished", terminal)
	if j.State != jobs.StateFailed || !j.HasReport {
		t.Fatalf("job = %s, report %v; want failed with a report", j.State, j.HasReport)
	}
	if m := readReport(t, s, j.ID); m.Verdict != "unsafe" || !hasGlobal(m, "mylib.Refused") || m.Source.Path != "m.pt" {
		t.Errorf("report = verdict %s, globals %+v, source %q; want the conversion's: unsafe, mylib.Refused, m.pt", m.Verdict, m.Globals, m.Source.Path)
	}
}

// A job's allowed globals reach its converter, survive in its record, and are part of what an
// Idempotency-Key replays.
func TestAllowGlobalsReachConverter(t *testing.T) {
	got := make(chan []string, 1)
	s := open(t, t.TempDir(), converterFunc(func(_ context.Context, _, dst string, opts convert.Options) (*convert.Manifest, error) {
		got <- opts.AllowGlobals
		return fakeOutput(dst)
	}), 0)
	allow := []string{"mylib.Config", "pytorch_lightning.callbacks.ModelCheckpoint"}
	j := submitParams(t, s, "x", jobs.SubmitParams{AllowGlobals: allow, IdempotencyKey: "k"})
	if g := <-got; !slices.Equal(g, allow) {
		t.Errorf("converter got %q, want %q", g, allow)
	}
	j = waitFor(t, s, j.ID, "finished", terminal)
	if !slices.Equal(j.AllowGlobals, allow) || j.Mode != jobs.ModeConvert {
		t.Errorf("stored job: allow %q mode %q, want %q convert", j.AllowGlobals, j.Mode, allow)
	}
	up, err := s.Stage(t.Context(), strings.NewReader("x"), 1)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Submit(t.Context(), jobs.SubmitParams{Tenant: "t", Filename: "m.pt", IdempotencyKey: "k", Upload: up, AllowGlobals: allow[:1]})
	if !errors.Is(err, jobs.ErrIdempotencyMismatch) {
		t.Errorf("replay with other globals = %v, want ErrIdempotencyMismatch", err)
	}
}

// A running job is served with its converter's latest progress.
func TestRunningJobHasProgress(t *testing.T) {
	want := convert.Progress{Phase: convert.PhaseWriting, BytesDone: 10, BytesTotal: 20, TensorsDone: 1, TensorsTotal: 2}
	reported := make(chan struct{})
	s := open(t, t.TempDir(), converterFunc(func(ctx context.Context, _, _ string, opts convert.Options) (*convert.Manifest, error) {
		opts.Progress(want)
		close(reported)
		<-ctx.Done()
		return nil, ctx.Err()
	}), 0)
	j := submit(t, s, "x")
	<-reported
	got, err := s.Get(t.Context(), "t", j.ID)
	if err != nil || got.State != jobs.StateRunning || got.Progress == nil || *got.Progress != want {
		t.Fatalf("Get = %s %+v, %v; want running with %+v", got.State, got.Progress, err, want)
	}
	if _, err := s.Get(t.Context(), "other", j.ID); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("another tenant's Get = %v, want ErrNotFound", err)
	}
	list, _, err := s.List(t.Context(), jobs.ListParams{Tenant: "t", PageSize: 10})
	if err != nil || len(list) != 1 || list[0].Progress == nil {
		t.Errorf("List = %+v, %v; want the job with its progress", list, err)
	}
	if _, err := s.Cancel(t.Context(), "t", j.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(t.Context(), "t", j.ID); got.State != jobs.StateCanceled || got.Progress != nil {
		t.Errorf("after Cancel: %s %+v, want canceled without progress", got.State, got.Progress)
	}
}

// A restart keeps what a scan job and a refused conversion own: their reports (a scan job has
// no output, and is not lost for it).
func TestReportsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := jobs.Open(t.Context(), jobs.Config{Dir: dir, Converter: convert.InProcess{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	scan := waitFor(t, s, submitParams(t, s, systemPickle, jobs.SubmitParams{Mode: jobs.ModeScan}).ID, "finished", terminal)
	refused := waitFor(t, s, submit(t, s, systemPickle).ID, "finished", terminal)
	if !scan.HasReport || !refused.HasReport {
		t.Fatalf("HasReport = %v (scan), %v (refused), want both", scan.HasReport, refused.HasReport)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, dir, convert.InProcess{}, 0)
	for _, j := range []jobs.Job{scan, refused} {
		if m := readReport(t, s, j.ID); m.Verdict != "unsafe" {
			t.Errorf("job %s's report after a restart: verdict %q, want unsafe", j.Mode, m.Verdict)
		}
		if got, err := s.Get(t.Context(), "t", j.ID); err != nil || got.State != j.State {
			t.Errorf("job %s after a restart: %s (%v), want %s", j.Mode, got.State, err, j.State)
		}
	}
}

// TestReportOmitsPartDigests: the part digests a conversion took for its output's upload are
// no part of the report, which describes the output itself.
func TestReportOmitsPartDigests(t *testing.T) {
	conv := converterFunc(func(_ context.Context, _, dst string, _ convert.Options) (*convert.Manifest, error) {
		m, err := fakeOutput(dst)
		if err == nil {
			m.Output.PartSize, m.Output.PartSHA256 = convert.MinHashPartSize, []string{m.Output.SHA256}
		}
		return m, err
	})
	s := open(t, t.TempDir(), conv, 0)
	j := waitFor(t, s, submit(t, s, "x").ID, "finished", terminal)
	if j.State != jobs.StateSucceeded {
		t.Fatalf("job %s %+v; want succeeded", j.State, j.Error)
	}
	if out := readReport(t, s, j.ID).Output; out == nil || out.PartSize != 0 || out.PartSHA256 != nil || out.SHA256 != j.OutputSHA256 {
		t.Errorf("report's output %+v; want the job's sha-256 %s and no part digests", out, j.OutputSHA256)
	}
}

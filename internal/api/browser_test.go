package api_test

import (
	"archive/zip"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// The web page in a real browser: Debian's chromium, driven over the DevTools protocol with
// chromedp, against the real server and job service. Each test waits on the page's DOM, never
// on time; browserTimeout and waitTimeout only bound a test that would otherwise hang.

const (
	browserTimeout = 3 * time.Minute
	waitTimeout    = time.Minute
)

// chromiumPath returns the browser to drive. Without one the test is skipped, except in CI
// (CI set), where .ci/run installs chromium so that these tests always run.
func chromiumPath(t *testing.T) string {
	t.Helper()
	names := []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but no browser is installed (looked for %s): .ci/run installs chromium", strings.Join(names, ", "))
	}
	t.Skipf("no browser to test the web page in (looked for %s): apt-get install -y chromium", strings.Join(names, ", "))
	return ""
}

// tab is one browser tab on the page, with its downloads and its console.
type tab struct {
	t         *testing.T
	ctx       context.Context
	downloads string
	mu        sync.Mutex
	problems  []string // exceptions, and errors the browser logged other than failed requests
}

// chromium is the package's one browser. Starting Chromium takes seconds (8 s on a loaded
// 2-core machine), so the tests share it, each in a browser context of its own (its own
// storage and downloads, like a fresh profile) and its own tab. TestMain stops it.
var chromium struct {
	mu   sync.Mutex
	ctx  context.Context // its first tab, nil until started
	stop func()
}

// sharedBrowser starts the package's browser, headless, on a fresh profile, with no network
// services of its own, or returns it.
func sharedBrowser(t *testing.T) context.Context {
	t.Helper()
	exe := chromiumPath(t)
	chromium.mu.Lock()
	defer chromium.mu.Unlock()
	if chromium.ctx != nil {
		return chromium.ctx
	}
	profile, err := os.MkdirTemp("", "converter-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exe), chromedp.UserDataDir(profile), chromedp.WindowSize(1280, 1000),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true))
	bctx, cancelBrowser := chromedp.NewContext(actx)
	stop := func() {
		cancelBrowser()
		cancelAlloc()
		os.RemoveAll(profile)
	}
	if err := chromedp.Do(bctx); err != nil {
		stop()
		t.Fatalf("start %s: %v", exe, err)
	}
	chromium.ctx, chromium.stop = bctx, stop
	return bctx
}

// stopBrowser stops the package's browser, if a test started it.
func stopBrowser() {
	chromium.mu.Lock()
	defer chromium.mu.Unlock()
	if chromium.stop != nil {
		chromium.stop()
	}
}

// openTab opens the page of e in a new tab, in a new browser context. With script false the
// page runs without JavaScript.
func openTab(t *testing.T, e *env, script bool) *tab {
	t.Helper()
	tabCtx, cancelTab := chromedp.NewContext(sharedBrowser(t), chromedp.WithNewBrowserContext())
	// The first action binds the tab's life to its context: that one has no deadline.
	if err := chromedp.Do(tabCtx); err != nil {
		cancelTab()
		t.Fatalf("browser: open a tab: %v", err)
	}
	bctx, cancelTimeout := context.WithTimeout(tabCtx, browserTimeout)
	tb := &tab{t: t, ctx: bctx, downloads: t.TempDir()}
	console := chromedp.Console(tabCtx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range console {
			if err != nil {
				return
			}
			// A failed request is how the page learns that a server has no /report yet;
			// anything else (an exception, a CSP or Trusted Types violation) is a defect.
			if m.IsException() || (m.Type == "error" && m.Source != "network") {
				tb.mu.Lock()
				tb.problems = append(tb.problems, fmt.Sprintf("%s %s:%d", m, m.URL, m.Line+1))
				tb.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancelTimeout()
		cancelTab()
		<-done
		for _, p := range tb.problems {
			t.Errorf("browser console: %s", p)
		}
	})
	tb.run(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: tb.downloads, EventsEnabled: new(true),
			BrowserContextID: chromedp.FromContext(tabCtx).BrowserContextID,
		})
		return err
	}))
	if !script {
		tb.run(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.Call(ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
			return err
		}))
	}
	tb.run(chromedp.Navigate(e.url + "/"))
	return tb
}

// run runs actions, failing the test on an error.
func (tb *tab) run(actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	if err := chromedp.Do(tb.ctx, actions...); err != nil {
		tb.t.Fatalf("browser: %v", err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	v, err := chromedp.Run(tb.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tb.t.Fatalf("browser: evaluate %s: %v", expr, err)
	}
	return v
}

// waitFor waits until a JavaScript predicate holds, re-checking it on every DOM change. It gives
// up after waitTimeout, while the browser still answers, to show what the page says.
//
// A poll does not survive a navigation: when the page it ran in is gone (or chromedp still
// names the previous page's context, just after a reload) it starts again in the new one.
func (tb *tab) waitFor(predicate string) {
	tb.t.Helper()
	for {
		_, err := chromedp.Run(tb.ctx, chromedp.Poll[bool](predicate, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(waitTimeout)))
		if err != nil && tb.ctx.Err() == nil && (strings.Contains(err.Error(), "Cannot find context with specified id") ||
			strings.Contains(err.Error(), "Execution context was destroyed")) {
			continue
		}
		if err != nil {
			body, _ := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`document.body.innerText`))
			tb.t.Fatalf("browser: waiting for %s: %v\npage text:\n%s", predicate, err, body)
		}
		return
	}
}

// text returns the text content of the first element sel matches.
func (tb *tab) text(sel string) string {
	tb.t.Helper()
	s, err := chromedp.Run(tb.ctx, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		tb.t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return s
}

// screenshot saves the whole page as NAME.png in the test's artifact directory (kept with
// go test -artifacts; see README.md).
func (tb *tab) screenshot(name string) {
	tb.t.Helper()
	png, err := chromedp.Run(tb.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.t.Fatalf("browser: screenshot: %v", err)
	}
	path := filepath.Join(tb.t.ArtifactDir(), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Logf("screenshot: %s", path)
}

// drop drags files from outside the page onto the element with the given id and drops them.
func (tb *tab) drop(id string, paths ...string) {
	tb.t.Helper()
	r := eval[struct{ X, Y float64 }](tb, `(() => { const r = document.getElementById('`+id+`').getBoundingClientRect();
		return { X: r.x + r.width / 2, Y: r.y + r.height / 2 }; })()`)
	data := &input.DragData{Items: []*input.DragDataItem{}, Files: paths, DragOperationsMask: 1}
	tb.run(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		for _, typ := range []input.DispatchDragEventType{input.DispatchDragEventTypeDragEnter, input.DispatchDragEventTypeDragOver, input.DispatchDragEventTypeDrop} {
			if _, err := chromedp.Call(ctx, input.DispatchDragEvent, input.DispatchDragEventParams{Type: typ, X: r.X, Y: r.Y, Data: data}); err != nil {
				return err
			}
		}
		return nil
	}))
}

// choose puts files in the page's file input, as the file picker does.
func (tb *tab) choose(paths ...string) {
	tb.t.Helper()
	tb.run(chromedp.SetUploadFiles(chromedp.ID("file"), paths))
}

// download clicks sel, a download link, and returns the name the browser was offered and the
// bytes it saved.
func (tb *tab) download(sel string) (string, []byte) {
	tb.t.Helper()
	begin := chromedp.BrowserEvents(tb.ctx, browser.DownloadWillBegin)
	progress := chromedp.BrowserEvents(tb.ctx, browser.DownloadProgress)
	tb.run(chromedp.Click(chromedp.CSS(sel)))
	var name, guid string
	for ev, err := range begin {
		if err != nil {
			tb.t.Fatalf("browser: no download began: %v", err)
		}
		name, guid = ev.SuggestedFilename, ev.GUID
		break
	}
	for ev, err := range progress {
		if err != nil {
			tb.t.Fatalf("browser: download %s did not complete: %v", name, err)
		}
		if ev.GUID != guid || ev.State == browser.DownloadProgressStateInProgress {
			continue
		}
		if ev.State != browser.DownloadProgressStateCompleted {
			tb.t.Fatalf("browser: download %s ended %s", name, ev.State)
		}
		break
	}
	b, err := os.ReadFile(filepath.Join(tb.downloads, guid))
	if err != nil {
		tb.t.Fatal(err)
	}
	return name, b
}

func testdataPath(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "testdata", "torch", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// maliciousCheckpoint writes a torch zip archive whose data.pkl calls os.system, by hand: the
// bytes are never loaded by anything but the converter's static reader. The GLOBAL opcode is at
// byte 5 of evil/data.pkl.
func maliciousCheckpoint(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "evil.pt")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	z := zip.NewWriter(f)
	for _, entry := range []struct{ name, data string }{
		// PROTO 2, EMPTY_DICT, BINPUT 0, GLOBAL os.system, BINPUT 1, BINUNICODE "id",
		// BINPUT 2, TUPLE1, BINPUT 3, REDUCE, BINPUT 4, STOP.
		{"evil/data.pkl", "\x80\x02}q\x00cos\nsystem\nq\x01X\x02\x00\x00\x00idq\x02\x85q\x03Rq\x04."},
		{"evil/version", "3\n"},
	} {
		w, err := z.CreateHeader(&zip.FileHeader{Name: entry.name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(entry.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// finished is a predicate: n cards, every one in a final state.
func finished(n int) string {
	return fmt.Sprintf(`(() => { const c = [...document.querySelectorAll('#jobs li.job')];
		return c.length === %d && c.every((li) => ['succeeded', 'failed', 'canceled', 'not uploaded'].includes(li.dataset.state)); })()`, n)
}

// manifestOf reads a succeeded job's manifest through the API.
func (e *env) manifestOf(id string) (m struct {
	Tensors []struct {
		Name  string  `json:"name"`
		DType string  `json:"dtype"`
		Shape []int64 `json:"shape"`
	} `json:"tensors"`
}) {
	e.t.Helper()
	resp, b := e.do("GET", "/v1/jobs/"+id+"/manifest", "", nil, nil)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET manifest = %d", resp.StatusCode)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		e.t.Fatal(err)
	}
	return m
}

// onlyJob returns the one job the tenant has.
func (e *env) onlyJob(token string) jobResp {
	e.t.Helper()
	_, b := e.do("GET", "/v1/jobs", token, nil, nil)
	list := decode[struct{ Jobs []jobResp }](e.t, b)
	if len(list.Jobs) != 1 {
		e.t.Fatalf("%d jobs, want 1", len(list.Jobs))
	}
	return list.Jobs[0]
}

// A checkpoint chosen on the page is uploaded (its bar reaching 100%), converted, reported
// (every tensor with its dtype and shape) and downloaded: the saved file is the job's output.
// The recent jobs list shows it, and its state filter works.
func TestBrowserConvertsAndDownloads(t *testing.T) {
	e := newEnv(t, envOpts{})
	tb := openTab(t, e, true)
	tb.waitFor(`!document.getElementById('recent-section').hidden`)
	tb.choose(testdataPath(t, "mymodel.pt"))
	tb.run(chromedp.Click(chromedp.ID("convert-btn")))
	tb.waitFor(finished(1))
	tb.waitFor(`document.querySelector('#jobs details.report:not([hidden])') !== null`)

	j := e.onlyJob("")
	if j.State != "succeeded" {
		t.Fatalf("job = %+v, want succeeded", j)
	}
	if got := tb.text("#announce"); got != "mymodel.pt: succeeded" {
		t.Errorf("live region says %q, want the job's new state", got)
	}
	c := `#jobs li[data-job="` + j.ID + `"]`
	if v := eval[float64](tb, `document.querySelector('`+c+` progress').value`); v != 100 {
		t.Errorf("upload bar = %v, want 100", v)
	}
	facts := tb.text(c + " .facts")
	for _, want := range []string{j.Input.SHA256, j.Output.SHA256} {
		if !strings.Contains(facts, want) {
			t.Errorf("card's digests %q lack %s", facts, want)
		}
	}
	tb.run(chromedp.Click(chromedp.CSS(c + " details.report summary")))
	report := tb.text(c + " details.report")
	if !strings.Contains(report, "safe") {
		t.Errorf("report %q lacks the verdict", report)
	}
	for _, tensor := range e.manifestOf(j.ID).Tensors {
		shape := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(tensor.Shape)), ", "), "[]")
		row := tensor.Name + tensor.DType + "[" + shape + "]"
		if !strings.Contains(report, row) {
			t.Errorf("report lacks the row of tensor %s (%s)\n%s", tensor.Name, row, report)
		}
	}
	tb.screenshot("converted")

	name, got := tb.download(c + " a.download")
	if name != j.Output.Filename || sha256Hex(got) != j.Output.SHA256 {
		t.Errorf("downloaded %q with sha256 %s, want %q with %s", name, sha256Hex(got), j.Output.Filename, j.Output.SHA256)
	}

	tb.waitFor(`document.querySelectorAll('#recent tbody tr').length === 1`)
	if row := tb.text("#recent tbody tr"); !strings.Contains(row, "mymodel.pt") || !strings.Contains(row, "succeeded") {
		t.Errorf("recent jobs row = %q", row)
	}
	tb.run(chromedp.SetValue(chromedp.ID("state-filter"), "failed"), chromedp.Click(chromedp.CSS("#recent-form button")))
	tb.waitFor(`document.querySelectorAll('#recent tbody tr').length === 0 && /No failed jobs/.test(document.getElementById('recent-status').textContent)`)
	tb.run(chromedp.SetValue(chromedp.ID("state-filter"), "succeeded"), chromedp.Click(chromedp.CSS("#recent-form button")))
	tb.waitFor(`document.querySelectorAll('#recent tbody tr').length === 1`)
}

// A malicious checkpoint is refused, and the page says which global, where: the report's
// globals (when the server serves /report) or the job's error.
func TestBrowserShowsRefusal(t *testing.T) {
	e := newEnv(t, envOpts{})
	tb := openTab(t, e, true)
	tb.choose(maliciousCheckpoint(t))
	tb.run(chromedp.Click(chromedp.ID("convert-btn")))
	tb.waitFor(finished(1))
	j := e.onlyJob("")
	c := `#jobs li[data-job="` + j.ID + `"]`
	if j.State != "failed" || j.Error == nil || j.Error.Type != "unsafe" {
		t.Fatalf("job = %+v, want failed unsafe", j)
	}
	resp, err := http.Get(e.url + "/v1/jobs/" + j.ID + "/report")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		t.Log("this server has no /report: the page shows the job's error")
		tb.waitFor(`document.querySelector('` + c + ` .refusal:not([hidden])') !== null`)
		if !strings.Contains(j.Error.Detail, "evil/data.pkl@5: global os.system") {
			t.Errorf("error detail = %q, want the global and its offset", j.Error.Detail)
		}
		if got, want := tb.text(c+" .refusal"), "Refused as unsafe"+j.Error.Detail; got != want {
			t.Errorf("refusal = %q, want %q", got, want)
		}
	} else {
		tb.waitFor(`document.querySelector('` + c + ` .offenders') !== null`)
		if got := tb.text(c + " .offenders"); got != "os.system dangerous, in evil/data.pkl at byte 5" {
			t.Errorf("offending globals = %q", got)
		}
	}
	if n := eval[int](tb, `document.querySelectorAll('`+c+` a.download').length`); n != 0 {
		t.Errorf("a refused file has %d download links", n)
	}
	tb.screenshot("refused")
}

// An upload the server refuses shows why on its card, and the others are not held up.
func TestBrowserShowsUploadRefusal(t *testing.T) {
	e := newEnv(t, envOpts{maxUpload: 1000})
	tb := openTab(t, e, true)
	tb.choose(testdataPath(t, "mymodel.pt"), testdataPath(t, "dtypes.pt"))
	tb.run(chromedp.Click(chromedp.ID("convert-btn")))
	tb.waitFor(finished(2))
	got := eval[map[string]string](tb, `Object.fromEntries([...document.querySelectorAll('#jobs li.job')].map((li) => [li.querySelector('h3').textContent, li.dataset.state]))`)
	if want := map[string]string{"mymodel.pt": "succeeded", "dtypes.pt": "not uploaded"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("card states = %v, want %v", got, want)
	}
	refusal := tb.text(`#jobs li[data-state="not uploaded"] .refusal`)
	if want := "Upload refuseduploads are limited to 1000 bytes"; refusal != want {
		t.Errorf("refusal = %q, want %q", refusal, want)
	}
}

// Several files dropped at once are chosen, as the picker would, and Enter on the focused
// Convert button uploads them: each is followed side by side to its own end.
func TestBrowserUploadsSeveral(t *testing.T) {
	e := newEnv(t, envOpts{workers: 2})
	tb := openTab(t, e, true)
	files := []string{testdataPath(t, "mymodel.pt"), testdataPath(t, "nested.pt"), maliciousCheckpoint(t), testdataPath(t, "dtypes.pt")}
	tb.drop("drop", files...)
	if n := eval[int](tb, `document.getElementById('file').files.length`); n != len(files) {
		t.Fatalf("dropping %d files chose %d", len(files), n)
	}
	if id := eval[string](tb, `document.activeElement.id`); id != "convert-btn" {
		t.Errorf("after a drop the focus is on #%s, want the Convert button", id)
	}
	tb.run(chromedp.KeyEvent(kb.Enter))
	tb.waitFor(finished(len(files)))
	got := eval[map[string]string](tb, `Object.fromEntries([...document.querySelectorAll('#jobs li.job')].map((li) => [li.querySelector('h3').textContent, li.dataset.state]))`)
	want := map[string]string{"mymodel.pt": "succeeded", "nested.pt": "succeeded", "evil.pt": "failed", "dtypes.pt": "succeeded"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("card states = %v, want %v", got, want)
	}
	_, b := e.do("GET", "/v1/jobs", "", nil, nil)
	var names []string
	for _, j := range decode[struct{ Jobs []jobResp }](t, b).Jobs {
		names = append(names, j.Input.Filename)
	}
	slices.Sort(names)
	if want := []string{"dtypes.pt", "evil.pt", "mymodel.pt", "nested.pt"}; !slices.Equal(names, want) {
		t.Errorf("server has jobs %v, want %v", names, want)
	}
	tb.screenshot("several")
}

// Without JavaScript the page's form still uploads: the browser lands on the job's page, which
// reloads itself until the job is done and then links the output. With tokens it cannot, and
// says so.
func TestBrowserWithoutJavaScript(t *testing.T) {
	e := newEnv(t, envOpts{})
	tb := openTab(t, e, false)
	tb.choose(testdataPath(t, "mymodel.pt"))
	tb.run(chromedp.Click(chromedp.ID("convert-btn")))
	tb.run(chromedp.WaitVisible(chromedp.CSS(`a.button[download]`)))
	j := e.onlyJob("")
	loc, err := chromedp.Run(tb.ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if want := e.url + "/jobs/" + j.ID; loc != want {
		t.Errorf("landed on %s, want %s", loc, want)
	}
	page := tb.text("main")
	for _, want := range []string{"mymodel.pt", "succeeded", j.Input.SHA256, j.Output.SHA256} {
		if !strings.Contains(page, want) {
			t.Errorf("job page lacks %q", want)
		}
	}
	tb.screenshot("no-javascript")
	name, got := tb.download(`a.button[download]`)
	if name != j.Output.Filename || sha256Hex(got) != j.Output.SHA256 {
		t.Errorf("downloaded %q with sha256 %s, want %q with %s", name, sha256Hex(got), j.Output.Filename, j.Output.SHA256)
	}

	// A server with tokens: the form cannot send one, and the answer says so, as a page.
	withTokens := newEnv(t, envOpts{tokens: "alice secret-a\n"})
	tb = openTab(t, withTokens, false)
	if got := tb.text("noscript"); !strings.Contains(got, "a plain form cannot send") {
		t.Errorf("the page does not tell a user without JavaScript that the form needs a token: %q", got)
	}
	tb.choose(testdataPath(t, "mymodel.pt"))
	tb.run(chromedp.Click(chromedp.ID("convert-btn")), chromedp.WaitVisible(chromedp.CSS(".status-line")))
	if got := tb.text("main"); !strings.Contains(got, "HTTP 401") || !strings.Contains(got, "a plain form cannot send") {
		t.Errorf("form post without a token answered %q", got)
	}
	tb.screenshot("no-javascript-token")
}

// With tokens the page asks for one, keeps it in the tab's sessionStorage (a reload keeps it),
// sends it with every request, and downloads with it; the recent jobs list asks for it first.
func TestBrowserWithToken(t *testing.T) {
	e := newEnv(t, envOpts{tokens: "alice secret-a\nbob secret-b\n"})
	other := e.submit("secret-b", "bobs.pt", fixture(t, "mymodel.pt"), nil)
	tb := openTab(t, e, true)
	tb.waitFor(`/Enter your token/.test(document.getElementById('recent-status').textContent)`)
	tb.run(chromedp.SendKeys(chromedp.ID("token"), "secret-a"), chromedp.Click(chromedp.CSS("#token-form button[type=submit]")))
	tb.waitFor(`/No jobs yet/.test(document.getElementById('recent-status').textContent)`)
	tb.run(chromedp.Reload())
	tb.waitFor(`document.getElementById('token').value === 'secret-a' && /No jobs yet/.test(document.getElementById('recent-status').textContent)`)

	tb.choose(testdataPath(t, "mymodel.pt"))
	tb.run(chromedp.Click(chromedp.ID("convert-btn")))
	tb.waitFor(finished(1))
	j := e.onlyJob("secret-a")
	if j.State != "succeeded" {
		t.Fatalf("job = %+v", j)
	}
	tb.waitFor(`document.querySelectorAll('#recent tbody tr').length === 1`)
	if strings.Contains(tb.text("#recent"), other.ID) || strings.Contains(tb.text("#recent"), "bobs.pt") {
		t.Errorf("alice's page lists bob's job")
	}
	tb.screenshot("token")
	name, got := tb.download(`#jobs li[data-job="` + j.ID + `"] a.download`)
	if name != j.Output.Filename || sha256Hex(got) != j.Output.SHA256 {
		t.Errorf("downloaded %q with sha256 %s, want %q with %s", name, sha256Hex(got), j.Output.Filename, j.Output.SHA256)
	}

	tb.run(chromedp.Click(chromedp.ID("token-forget")))
	tb.waitFor(`/Enter your token/.test(document.getElementById('recent-status').textContent)`)
	if v := eval[bool](tb, `sessionStorage.length === 0`); !v {
		t.Errorf("forgetting the token left sessionStorage non-empty")
	}
}

// The page follows the API the issue describes even where this server does not serve it yet:
// the job's links (self, output, report) rather than paths it builds, the conversion progress
// of a running job, and the report of a refused one. The test answers the page's API requests
// itself, through the DevTools protocol, with those shapes; a request to any other URL (a path
// the page built instead of following a link) fails the test.
func TestBrowserFollowsLinksAndProgress(t *testing.T) {
	e := newEnv(t, envOpts{})
	tb := openTab(t, e, true)
	const id = "01a22c77-0000-7000-8000-000000000001"
	var state atomic.Value
	state.Store("running")
	job := func() map[string]any {
		j := map[string]any{
			"id": id, "state": state.Load(), "created_at": "2026-11-30T12:00:00Z", "updated_at": "2026-11-30T12:00:01Z",
			"attempts": 1, "input": map[string]any{"filename": "lightning.ckpt", "size": 4096, "sha256": strings.Repeat("ab", 32)},
			"links": map[string]string{"self": "/v1/jobs/" + id + "?via=link", "output": "/v1/jobs/" + id + "/output?via=link", "report": "/v1/jobs/" + id + "/report?via=link"},
		}
		if state.Load() == "running" {
			j["progress"] = map[string]any{"phase": "writing", "bytes_done": 1024, "bytes_total": 4096, "tensors_done": 1, "tensors_total": 4}
		} else {
			j["error"] = map[string]any{"type": "unsafe", "detail": "unsafe: archive/data.pkl@5: global os.system is known-dangerous"}
		}
		return j
	}
	report := map[string]any{
		"converter_version": "test", "verdict": "unsafe",
		"source": map[string]any{"size": 4096, "container": "zip", "pickle_protocol": 2},
		"error":  map[string]any{"type": "unsafe", "detail": "unsafe: archive/data.pkl@5: global os.system is known-dangerous"},
		"globals": []map[string]any{
			{"entry": "archive/data.pkl", "module": "os", "name": "system", "offset": 5, "class": "dangerous"},
			{"entry": "archive/data.pkl", "module": "torch._utils", "name": "_rebuild_tensor_v2", "offset": 40, "class": "allowed"},
			{"entry": "archive/data.pkl", "module": "pytorch_lightning.callbacks", "name": "ModelCheckpoint", "offset": 97, "class": "unknown"},
		},
		"tensors": []map[string]any{{"name": "model.w", "dtype": "F32", "shape": []int{2, 3}, "bytes": 24}},
		"aliases": map[string]string{"model.w_alias": "model.w"},
		"dropped": []map[string]any{{"path": "callbacks.0", "type": "pytorch_lightning.callbacks.ModelCheckpoint"}},
	}
	answers := map[string]func() (int, any){
		"GET /v1/jobs?page_size=20":               func() (int, any) { return http.StatusOK, map[string]any{"jobs": []any{job()}} },
		"GET /v1/jobs/" + id + "?via=link":        func() (int, any) { return http.StatusOK, job() },
		"GET /v1/jobs/" + id + "/report?via=link": func() (int, any) { return http.StatusOK, report },
	}
	unexpected := tb.fakeAPI(answers)
	tb.run(chromedp.Click(chromedp.CSS("#recent-form button")))
	tb.waitFor(`document.querySelectorAll('#recent tbody tr').length === 1`)
	tb.run(chromedp.Click(chromedp.CSS("#recent tbody button")))
	c := `#jobs li[data-job="` + id + `"]`
	tb.waitFor(`/writing 25% · 1 of 4 tensors/.test(document.querySelector('` + c + `').textContent)`)
	if v := eval[float64](tb, `document.querySelector('`+c+` .progress-row:not([hidden]) progress').value`); v != 25 {
		t.Errorf("conversion bar = %v, want 25", v)
	}
	if id := eval[string](tb, `document.activeElement.closest('li') && document.activeElement.closest('li').dataset.job`); id == "" {
		t.Errorf("Show did not move the focus to the job's card")
	}
	tb.screenshot("progress")

	state.Store("failed")
	tb.waitFor(`document.querySelector('` + c + ` .offenders') !== null`)
	if got, want := tb.text(c+" .offenders"), "os.system dangerous, in archive/data.pkl at byte 5"+
		"pytorch_lightning.callbacks.ModelCheckpoint unknown, in archive/data.pkl at byte 97"; got != want {
		t.Errorf("offending globals = %q, want %q", got, want)
	}
	rep := tb.text(c + " details.report")
	for _, want := range []string{"Globals (3)", "torch._utils._rebuild_tensor_v2allowedarchive/data.pkl40", "model.wF32[2, 3]24 B",
		"Aliases (1)", "model.w_aliasmodel.w", "Dropped entries (1)", "callbacks.0pytorch_lightning.callbacks.ModelCheckpoint"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	if open := eval[bool](tb, `document.querySelector('`+c+` details.report').open`); !open {
		t.Errorf("an unsafe file's report is folded")
	}
	tb.screenshot("report")
	if u := unexpected(); len(u) != 0 {
		t.Errorf("the page requested %q, not the job's links", u)
	}
}

// fakeAPI answers the page's requests to /v1/ from answers, by method and request URI, through
// the DevTools protocol: the server never sees them. A request answers has no entry for gets a
// 404 and is listed by the function fakeAPI returns.
func (tb *tab) fakeAPI(answers map[string]func() (int, any)) (unexpected func() []string) {
	var (
		mu   sync.Mutex
		miss []string
	)
	paused := chromedp.Events(tb.ctx, fetch.RequestPaused)
	tb.run(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/v1/*"}}})
		return err
	}))
	go func() {
		for ev, err := range paused {
			if err != nil {
				return
			}
			u, _ := url.Parse(ev.Request.URL)
			key := ev.Request.Method + " " + u.RequestURI()
			status, body := http.StatusNotFound, any(map[string]any{"type": "about:blank", "title": "Not found", "status": 404})
			if answer, ok := answers[key]; ok {
				status, body = answer()
			} else {
				mu.Lock()
				miss = append(miss, key)
				mu.Unlock()
			}
			b, _ := json.Marshal(body)
			chromedp.Call(tb.ctx, fetch.FulfillRequest, fetch.FulfillRequestParams{
				RequestID: ev.RequestID, ResponseCode: int64(status), Body: b,
				ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "application/json"}, {Name: "Retry-After", Value: "1"}},
			})
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(miss)
	}
}

// The options reach the upload's query (select, mode=scan, allow_global), and a scan-only job,
// which succeeds whatever the verdict and has no output, shows its verdict and the globals that
// made it, with no download link.
func TestBrowserScanOnlyWithOptions(t *testing.T) {
	e := newEnv(t, envOpts{})
	tb := openTab(t, e, true)
	const id = "01a22c77-0000-7000-8000-000000000002"
	job := map[string]any{
		"id": id, "state": "succeeded", "created_at": "2026-11-30T12:00:00Z", "updated_at": "2026-11-30T12:00:01Z",
		"attempts": 1, "input": map[string]any{"filename": "mymodel.pt", "size": 999, "sha256": strings.Repeat("cd", 32)},
	}
	report := map[string]any{
		"converter_version": "test", "verdict": "unsafe", "source": map[string]any{"size": 999, "container": "zip"},
		"error":   map[string]any{"type": "unsafe", "detail": "unsafe: mymodel/data.pkl@9: global mylib.Config is not allowed"},
		"globals": []map[string]any{{"entry": "mymodel/data.pkl", "module": "mylib", "name": "Config", "offset": 9, "class": "unknown"}},
	}
	ok := func(v any) func() (int, any) { return func() (int, any) { return http.StatusOK, v } }
	unexpected := tb.fakeAPI(map[string]func() (int, any){
		"GET /v1/jobs?page_size=20": ok(map[string]any{"jobs": []any{}}),
		"POST /v1/jobs?select=model&mode=scan&allow_global=mylib.Config&allow_global=mylib.Schedule&filename=mymodel.pt": func() (int, any) {
			return http.StatusAccepted, job
		},
		"GET /v1/jobs/" + id:             ok(job),
		"GET /v1/jobs/" + id + "/report": ok(report),
	})
	tb.run(chromedp.Click(chromedp.CSS("#options summary")),
		chromedp.SendKeys(chromedp.ID("select"), "model"),
		chromedp.SendKeys(chromedp.ID("allow"), "mylib.Config\nmylib.Schedule"))
	tb.choose(testdataPath(t, "mymodel.pt"))
	tb.run(chromedp.Click(chromedp.ID("scan-btn")))
	c := `#jobs li[data-job="` + id + `"]`
	tb.waitFor(`document.querySelector('` + c + ` .offenders') !== null`)
	if got, want := tb.text(c+" .refusal"), "Verdict: unsafeunsafe: mymodel/data.pkl@9: global mylib.Config is not allowedmylib.Config unknown, in mymodel/data.pkl at byte 9"; got != want {
		t.Errorf("refusal = %q, want %q", got, want)
	}
	if n := eval[int](tb, `document.querySelectorAll('`+c+` a.download').length`); n != 0 {
		t.Errorf("a scan-only job has %d download links", n)
	}
	tb.screenshot("scan-only")
	if u := unexpected(); len(u) != 0 {
		t.Errorf("unexpected requests %q", u)
	}
}

package api_test

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
)

// browserAccept is what Chromium sends when it navigates, a form post included.
const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"

// The page and its assets carry a CSP that allows only the server's own script and style, and
// the assets are content-addressed: cacheable forever, the plain names not served.
func TestPageAndAssets(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, page := e.do("GET", "/", "", nil, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET / = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "form-action 'self'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("Content-Security-Policy %q allows inline code", csp)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q", got)
	}
	if bytes.Contains(page, []byte("<style")) || bytes.Contains(page, []byte(" style=")) || regexp.MustCompile(`<script>|<script [^>]*>[^<]`).Match(page) {
		t.Errorf("the page has inline style or script, which its CSP blocks")
	}
	// The open server needs no token: no token field.
	if bytes.Contains(page, []byte(`id="token"`)) {
		t.Errorf("an open server's page asks for a token")
	}
	assets := regexp.MustCompile(`/static/(app|style)\.[0-9a-f]{12}\.(js|css)`).FindAll(page, -1)
	if len(assets) != 2 {
		t.Fatalf("page links %q, want app.HASH.js and style.HASH.css", assets)
	}
	for _, a := range assets {
		resp, body := e.do("GET", string(a), "", nil, nil)
		if resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Fatalf("GET %s = %d", a, resp.StatusCode)
		}
		if got := resp.Header.Get("Cache-Control"); got != "public, max-age=31536000, immutable" {
			t.Errorf("%s Cache-Control = %q", a, got)
		}
		if ct, csp := resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"); ct == "" || csp == "" {
			t.Errorf("%s Content-Type %q, CSP %q", a, ct, csp)
		}
	}
	for _, path := range []string{"/static/app.js", "/static/app.000000000000.js", "/static/..%2fpage.go"} {
		if resp, _ := e.do("GET", path, "", nil, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, resp.StatusCode)
		}
	}
}

// With tokens, the page asks for one, and tells a user without JavaScript that the plain form
// cannot send it.
func TestPageWithTokens(t *testing.T) {
	e := newEnv(t, envOpts{tokens: "alice secret-a\n"})
	_, page := e.do("GET", "/", "", nil, nil)
	for _, want := range []string{`id="token"`, "a plain form cannot send"} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// formPost posts data as a browser's plain form does (multipart, the "file" part) with the
// given Accept, outside the contract-checking client when the answer is an HTML problem.
func (e *env) formPost(action, accept string, header map[string]string, data []byte) (*http.Response, []byte) {
	e.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("file", "mymodel.pt")
	if err != nil {
		e.t.Fatal(err)
	}
	fw.Write(data)
	mw.WriteField("unused", "a field before the end of the form")
	mw.Close()
	req, err := http.NewRequestWithContext(e.t.Context(), "POST", e.url+action, &body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Accept", accept)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	// Not following the redirect: the test reads it.
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, b
}

// A plain form post from a browser is answered 303 to the job's page, which shows the job;
// an API client posting the same form still gets 202 and the job's JSON.
func TestFormPostRedirectsToJobPage(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := fixture(t, "mymodel.pt")
	resp, b := e.formPost("/v1/jobs", browserAccept, map[string]string{"Origin": e.url, "Sec-Fetch-Site": "same-origin"}, data)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("form post = %d, want 303\n%s", resp.StatusCode, b)
	}
	loc := resp.Header.Get("Location")
	id, ok := strings.CutPrefix(loc, "/jobs/")
	if !ok {
		t.Fatalf("Location = %q, want /jobs/ID", loc)
	}
	j := e.wait("", id)
	resp, page := e.do("GET", loc, "", nil, map[string]string{"Accept": browserAccept})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("GET %s = %d (CSP %q)", loc, resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	for _, want := range []string{"mymodel.pt", "succeeded", j.Input.SHA256, j.Output.SHA256, `href="/v1/jobs/` + id + `/output"`} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("job page lacks %q", want)
		}
	}
	if bytes.Contains(page, []byte(`http-equiv="refresh"`)) {
		t.Errorf("a finished job's page still reloads itself")
	}

	resp, b = e.formPost("/v1/jobs", "*/*", nil, data)
	if resp.StatusCode != http.StatusAccepted || !strings.HasPrefix(resp.Header.Get("Location"), "/v1/jobs/") {
		t.Fatalf("API client's form post = %d %q, want 202 and the job's URL\n%s", resp.StatusCode, resp.Header.Get("Location"), b)
	}
}

// A refused job's page says so, with the error's detail and the report's offending globals
// (which, where), and offers its report but no download. A scan-only job, which succeeds
// whatever the verdict, shows the verdict and the same globals.
func TestJobPageShowsRefusal(t *testing.T) {
	e := newEnv(t, envOpts{})
	evil, err := os.ReadFile(maliciousCheckpoint(t))
	if err != nil {
		t.Fatal(err)
	}
	const offender = "<code>os.system</code> dangerous, in evil/data.pkl at byte 5"
	for _, c := range []struct {
		action string
		state  string
		want   []string
	}{
		{"/v1/jobs", "failed", []string{"Refused as unsafe", "evil/data.pkl@5: global os.system is known-dangerous", offender}},
		{"/v1/jobs?mode=scan", "succeeded", []string{"Verdict: unsafe", offender}},
	} {
		resp, b := e.formPost(c.action, browserAccept, nil, evil)
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("form post to %s = %d\n%s", c.action, resp.StatusCode, b)
		}
		loc := resp.Header.Get("Location")
		if j := e.wait("", strings.TrimPrefix(loc, "/jobs/")); j.State != c.state {
			t.Fatalf("%s: job %+v, want %s", c.action, j, c.state)
		}
		_, page := e.do("GET", loc, "", nil, map[string]string{"Accept": browserAccept})
		for _, want := range append(c.want, `/report">Scan report (JSON)`) {
			if !bytes.Contains(page, []byte(want)) {
				t.Errorf("%s: job page lacks %q\n%s", c.action, want, page)
			}
		}
		if bytes.Contains(page, []byte("/output")) {
			t.Errorf("%s: job page links an output", c.action)
		}
	}
}

// A job that is not finished has a page that reloads itself, so that it works without script.
func TestJobPageRefreshesUntilFinished(t *testing.T) {
	e := newEnv(t, envOpts{converter: blockingConverter{started: make(chan string, 1)}})
	j := e.submit("", "slow.pt", []byte("never converted"), nil)
	_, page := e.do("GET", "/jobs/"+j.ID, "", nil, map[string]string{"Accept": browserAccept})
	if !bytes.Contains(page, []byte(`<meta http-equiv="refresh" content="2">`)) {
		t.Errorf("an unfinished job's page does not reload itself:\n%s", page)
	}
}

// What refuses a browser's form post, or its job page, is an HTML page with the same status, and
// says why; an API client gets the problem JSON.
func TestFormProblemsAreHTML(t *testing.T) {
	open := newEnv(t, envOpts{})
	withTokens := newEnv(t, envOpts{tokens: "alice secret-a\n"})
	data := []byte("any bytes")
	for _, c := range []struct {
		name   string
		e      *env
		header map[string]string
		status int
		want   string
	}{
		{"no token", withTokens, nil, http.StatusUnauthorized, "a plain form cannot send"},
		{"cross-origin", open, map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden, "Cross-origin request refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, b := c.e.formPost("/v1/jobs", browserAccept, c.header, data)
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" || !bytes.Contains(b, []byte(c.want)) {
				t.Errorf("form post = %d %s, want %d text/html saying %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), c.status, c.want, b)
			}
			resp, b = c.e.formPost("/v1/jobs", "application/json", c.header, data)
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("API form post = %d %s, want %d problem+json\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), c.status, b)
			}
		})
	}
	resp, page := open.do("GET", "/jobs/00000000-0000-0000-0000-000000000000", "", nil, map[string]string{"Accept": browserAccept})
	if resp.StatusCode != http.StatusNotFound || !bytes.Contains(page, []byte("no such job")) || !bytes.Contains(page, []byte(`/problems/not-found">What this means`)) {
		t.Errorf("missing job's page = %d\n%s", resp.StatusCode, page)
	}
	resp, _ = withTokens.do("GET", "/jobs/00000000-0000-0000-0000-000000000000", "", nil, map[string]string{"Accept": browserAccept})
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Errorf("job page without a token = %d %s, want 401 text/html", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

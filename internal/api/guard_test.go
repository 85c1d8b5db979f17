package api_test

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// An open server answers only requests addressed to a loopback name: a page whose own name was
// rebound to 127.0.0.1 gets 421 for reads and uploads alike. With tokens the Host is not checked
// (a rebinding page has no token).
func TestOpenServerAnswersLoopbackHostsOnly(t *testing.T) {
	e := newEnv(t, envOpts{converter: blockingConverter{started: make(chan string, 16)}})
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	port := u.Port()
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "LocalHost", "127.3.4.5:" + port, "[::1]:" + port, "[::1]"} {
		if resp, b := e.do("GET", "/v1/jobs", "", nil, map[string]string{"Host": host}); resp.StatusCode != http.StatusOK {
			t.Errorf("Host %s: GET /v1/jobs = %d, want 200\n%s", host, resp.StatusCode, b)
		}
	}
	for _, host := range []string{"evil.example", "evil.example:" + port, "localhost.evil.example:" + port, "127.0.0.1.nip.io:" + port, "192.0.2.1:" + port} {
		for _, path := range []string{"/v1/jobs", "/healthz", "/metrics"} {
			resp, b := e.do("GET", path, "", nil, map[string]string{"Host": host})
			if resp.StatusCode != http.StatusMisdirectedRequest {
				t.Errorf("Host %s: GET %s = %d, want 421\n%s", host, path, resp.StatusCode, b)
				continue
			}
			if p := decode[problemResp](t, b); !strings.HasSuffix(p.Type, "/misdirected-request") {
				t.Errorf("problem type = %q", p.Type)
			}
		}
		resp, _ := e.do("POST", "/v1/jobs?filename=m.pt", "", strings.NewReader("x"),
			map[string]string{"Host": host, "Content-Type": "application/octet-stream"})
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("Host %s: POST /v1/jobs = %d, want 421", host, resp.StatusCode)
		}
	}
	e.nothingKept("421")

	tok := newEnv(t, envOpts{tokens: "alice alice-token\n", converter: blockingConverter{started: make(chan string, 16)}})
	if resp, b := tok.do("GET", "/v1/jobs", "alice-token", nil, map[string]string{"Host": "converter.example.com"}); resp.StatusCode != http.StatusOK {
		t.Errorf("with tokens, Host converter.example.com = %d, want 200\n%s", resp.StatusCode, b)
	}
}

// A browser page on another origin cannot create, cancel or delete jobs, with or without a
// token; non-browser clients (no Origin, no Sec-Fetch-Site) and the server's own origin can.
func TestCrossOriginStateChangesRefused(t *testing.T) {
	for _, mode := range []struct{ name, tokens, token string }{{"open", "", ""}, {"tokens", "alice alice-token\n", "alice-token"}} {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, envOpts{tokens: mode.tokens, converter: blockingConverter{started: make(chan string, 16)}})
			self := e.url // http://127.0.0.1:PORT, the Host the client sends
			cases := []struct {
				name   string
				header map[string]string
				status int
			}{
				{"other origin", map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
				{"other port", map[string]string{"Origin": "http://127.0.0.1:1"}, http.StatusForbidden},
				{"opaque origin", map[string]string{"Origin": "null"}, http.StatusForbidden},
				{"fetch cross-site", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
				{"fetch same-site", map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
				{"fetch cross-site, own Origin", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": self}, http.StatusForbidden},
				{"fetch same-origin", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": self}, http.StatusAccepted},
				{"fetch none (typed URL)", map[string]string{"Sec-Fetch-Site": "none"}, http.StatusAccepted},
				{"own origin", map[string]string{"Origin": self}, http.StatusAccepted},
				{"not a browser", nil, http.StatusAccepted},
			}
			for _, c := range cases {
				h := map[string]string{"Content-Type": "application/octet-stream"}
				for k, v := range c.header {
					h[k] = v
				}
				resp, b := e.do("POST", "/v1/jobs?filename=m.pt", mode.token, strings.NewReader(c.name), h)
				if resp.StatusCode != c.status {
					t.Errorf("%s: POST /v1/jobs = %d, want %d\n%s", c.name, resp.StatusCode, c.status, b)
					continue
				}
				if c.status == http.StatusForbidden {
					if p := decode[problemResp](t, b); !strings.HasSuffix(p.Type, "/cross-origin-request") {
						t.Errorf("%s: problem type = %q", c.name, p.Type)
					}
				}
			}

			// The form post a hostile page can send without CORS.
			var body bytes.Buffer
			mw := multipart.NewWriter(&body)
			fw, _ := mw.CreateFormFile("file", "pytorch_model.bin")
			fw.Write([]byte("checkpoint"))
			mw.Close()
			resp, b := e.do("POST", "/v1/jobs", mode.token, &body, map[string]string{
				"Content-Type": mw.FormDataContentType(), "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("cross-site multipart POST = %d, want 403\n%s", resp.StatusCode, b)
			}

			j := e.submit(mode.token, "kept.pt", []byte("kept"), nil)
			evil := map[string]string{"Origin": "https://evil.example"}
			if resp, _ := e.do("POST", "/v1/jobs/"+j.ID+"/cancel", mode.token, nil, evil); resp.StatusCode != http.StatusForbidden {
				t.Errorf("cross-origin cancel = %d, want 403", resp.StatusCode)
			}
			if resp, _ := e.do("DELETE", "/v1/jobs/"+j.ID, mode.token, nil, evil); resp.StatusCode != http.StatusForbidden {
				t.Errorf("cross-origin DELETE = %d, want 403", resp.StatusCode)
			}
			resp, b = e.do("GET", "/v1/jobs/"+j.ID, mode.token, nil, map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("cross-origin GET = %d, want 200 (reads change nothing)\n%s", resp.StatusCode, b)
			}
			if got := decode[jobResp](t, b); got.State == "canceled" {
				t.Errorf("a refused cross-origin cancel canceled the job")
			}
		})
	}
}

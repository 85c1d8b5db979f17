package api_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Every 405 says which methods the path does serve.
func TestMethodNotAllowedListsAllow(t *testing.T) {
	e := newEnv(t, envOpts{})
	cases := []struct{ method, path, allow string }{
		{"PUT", "/v1/jobs/0190a5a8-0000-7000-8000-000000000000", "GET, HEAD, DELETE"},
		{"DELETE", "/v1/jobs", "GET, POST"},
		{"POST", "/healthz", "GET, HEAD"},
		{"PATCH", "/v1/jobs/0190a5a8-0000-7000-8000-000000000000/output", "GET, HEAD"},
	}
	for _, c := range cases {
		// Not e.client: these requests are outside the contract by design.
		req, _ := http.NewRequestWithContext(t.Context(), c.method, e.url+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != c.allow ||
			!strings.HasSuffix(decode[problemResp](t, b).Type, "/method-not-allowed") {
			t.Errorf("%s %s = %d Allow %q, want 405 Allow %q with a problem\n%s", c.method, c.path, resp.StatusCode, resp.Header.Get("Allow"), c.allow, b)
		}
	}
}

// HEAD answers what GET would, without a body: curl -I and download tools that check the size
// first work.
func TestHead(t *testing.T) {
	e := newEnv(t, envOpts{})
	data := fixture(t, "mymodel.pt")
	j := e.wait("", e.submit("", "m.pt", data, nil).ID)
	for _, path := range []string{"/healthz", "/readyz", "/v1/jobs/" + j.ID, "/v1/jobs/" + j.ID + "/output"} {
		resp, b := e.do("HEAD", path, "", nil, nil)
		if resp.StatusCode != http.StatusOK || len(b) != 0 {
			t.Errorf("HEAD %s = %d with %d body bytes, want 200 and none", path, resp.StatusCode, len(b))
		}
	}
	resp, _ := e.do("HEAD", "/v1/jobs/"+j.ID+"/output", "", nil, nil)
	if resp.ContentLength != j.Output.Size || resp.Header.Get("ETag") != `"sha256:`+j.Output.SHA256+`"` {
		t.Errorf("HEAD output: Content-Length %d ETag %q, want %d and the output digest", resp.ContentLength, resp.Header.Get("ETag"), j.Output.Size)
	}
}

// A compressed body is not the checkpoint: it is refused, not stored as if it were raw.
func TestContentEncodingRefused(t *testing.T) {
	e := newEnv(t, envOpts{})
	for _, enc := range []string{"gzip", "br, identity"} {
		resp, b := e.do("POST", "/v1/jobs?filename=m.pt", "", strings.NewReader("x"),
			map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": enc})
		if resp.StatusCode != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Encoding %s = %d, want 415\n%s", enc, resp.StatusCode, b)
		}
	}
	e.nothingKept("415")
	e.submit("", "m.pt", fixture(t, "mymodel.pt"), map[string]string{"Content-Encoding": "identity"})
}

// A client that sends headers and part of a body, then nothing, gets 408 once the upload makes
// no progress for the idle timeout, and its slot goes to the next upload.
func TestUploadIdleTimeout(t *testing.T) {
	e := newEnv(t, envOpts{maxUploads: 1, uploadIdle: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "POST /v1/jobs?filename=m.pt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nonly some"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	// Bounded wait for the answer; the server's own deadline is what ends the request.
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled upload: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	sent, _ := http.NewRequestWithContext(t.Context(), "POST", e.url+"/v1/jobs?filename=m.pt", nil)
	e.checkRaw(sent, resp, b)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.HasSuffix(decode[problemResp](t, b).Type, "/upload-timeout") {
		t.Errorf("stalled upload = %d %s, want 408 upload-timeout", resp.StatusCode, b)
	}
	e.nothingKept("408")
	e.submit("", "m.pt", fixture(t, "mymodel.pt"), nil) // the only slot is free again
}

// A stored output or manifest that no longer matches its recorded digest, or is gone, is never
// served: the download is 500 output-lost, the job becomes failed with an internal error, and
// the loss is counted.
func TestLostOutputIsNeverServed(t *testing.T) {
	damages := map[string]func(t *testing.T, path string){
		"flipped byte": func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 1)
			f.ReadAt(b, 100)
			b[0] ^= 0x01
			f.WriteAt(b, 100)
			// Some file systems keep coarse times: make sure the cached check is not reused.
			fi, _ := f.Stat()
			os.Chtimes(path, fi.ModTime(), fi.ModTime().Add(time.Second))
		},
		"truncated": func(t *testing.T, path string) { os.Truncate(path, 64) },
		"removed":   func(t *testing.T, path string) { os.Remove(path) },
	}
	for _, file := range []struct{ name, route string }{{"output.safetensors", "output"}, {"manifest.json", "manifest"}} {
		for name, damage := range damages {
			t.Run(file.route+"/"+name, func(t *testing.T) {
				e := newEnv(t, envOpts{})
				j := e.wait("", e.submit("", "m.pt", fixture(t, "mymodel.pt"), nil).ID)
				url := "/v1/jobs/" + j.ID + "/" + file.route
				if resp, _ := e.do("GET", url, "", nil, nil); resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s before damage = %d", file.route, resp.StatusCode)
				}
				damage(t, filepath.Join(e.dir, "jobs", j.ID, file.name))
				headers := map[string]string{}
				if file.route == "output" {
					headers["Range"] = "bytes=0-99"
				}
				resp, b := e.do("GET", url, "", nil, headers)
				if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get("ETag") != "" ||
					!strings.HasSuffix(decode[problemResp](t, b).Type, "/output-lost") {
					t.Errorf("GET %s after damage = %d ETag %q, want 500 output-lost and no ETag\n%.300s", file.route, resp.StatusCode, resp.Header.Get("ETag"), b)
				}
				got := e.wait("", j.ID)
				if got.State != "failed" || got.Error == nil || got.Error.Type != "internal" || !strings.Contains(got.Error.Detail, "output lost") {
					t.Errorf("job after loss = %s %+v, want failed internal output lost", got.State, got.Error)
				}
				if _, m := e.do("GET", "/metrics", "", nil, nil); !strings.Contains(string(m), `converter_outputs_lost_total{file="`+file.route+`"} 1`) {
					t.Errorf("metrics do not count the lost %s", file.route)
				}
				if resp, _ := e.do("GET", url, "", nil, nil); resp.StatusCode != http.StatusConflict {
					t.Errorf("GET %s of the failed job = %d, want 409", file.route, resp.StatusCode)
				}
			})
		}
	}
}

// Readiness is false while the data directory has less free space than the reserve, saying so;
// reads still work.
func TestReadyzReportsLowDisk(t *testing.T) {
	e := newEnv(t, envOpts{minFree: 1 << 62})
	resp, b := e.do("GET", "/readyz", "", nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(decode[problemResp](t, b).Detail, "bytes free") {
		t.Errorf("GET /readyz with no room = %d %s, want 503 naming the free space", resp.StatusCode, b)
	}
	if resp, _ := e.do("GET", "/v1/jobs", "", nil, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v1/jobs with no room = %d, want 200", resp.StatusCode)
	}
}

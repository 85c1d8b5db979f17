package api_test

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// jobEvents returns the Job of every "job" event in an event stream's body.
func jobEvents(t *testing.T, body []byte) []jobResp {
	t.Helper()
	var out []jobResp
	for _, ev := range strings.Split(strings.TrimSpace(string(body)), "\n\n") {
		name, data, ok := strings.Cut(ev, "\ndata: ")
		if !ok || name != "event: job" {
			t.Fatalf("not a job event: %q", ev)
		}
		out = append(out, decode[jobResp](t, []byte(data)))
	}
	return out
}

// A finished job's stream is one event, and ends.
func TestEventsOfFinishedJob(t *testing.T) {
	e := newEnv(t, envOpts{})
	j := e.wait("", e.submit("", "mymodel.pt", fixture(t, "mymodel.pt"), nil).ID)
	resp, b := e.do("GET", "/v1/jobs/"+j.ID+"/events", "", nil, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET events = %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	if evs := jobEvents(t, b); len(evs) != 1 || evs[0].State != "succeeded" {
		t.Errorf("events = %+v, want one, succeeded", evs)
	}
}

// A running job's stream starts with its progress and follows it to its end.
func TestEventsFollowRunningJob(t *testing.T) {
	conv := blockingConverter{started: make(chan string, 16)}
	e := newEnv(t, envOpts{converter: conv})
	j := e.submit("", "a.pt", []byte("bytes"), nil)
	<-conv.started
	// A raw client, to read the first event before the stream ends; the whole answer is
	// checked against the contract after.
	req, err := http.NewRequestWithContext(t.Context(), "GET", e.url+"/v1/jobs/"+j.ID+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: e.client.Transport.(*validating).next}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	br := bufio.NewReader(io.TeeReader(resp.Body, &body))
	for line := ""; line != "\n"; {
		if line, err = br.ReadString('\n'); err != nil {
			t.Fatalf("read first event: %v", err)
		}
	}
	first := jobEvents(t, body.Bytes())
	if len(first) != 1 || first[0].State != "running" || first[0].Progress == nil {
		t.Fatalf("first event = %+v, want the running job with its progress", first)
	}
	if r, b := e.do("POST", "/v1/jobs/"+j.ID+"/cancel", "", nil, nil); r.StatusCode != http.StatusOK {
		t.Fatalf("cancel = %d\n%s", r.StatusCode, b)
	}
	if _, err := io.ReadAll(br); err != nil {
		t.Fatal(err)
	}
	e.checkRaw(req, resp, body.Bytes())
	evs := jobEvents(t, body.Bytes())
	if last := evs[len(evs)-1]; last.State != "canceled" || last.Progress != nil {
		t.Errorf("last event = %+v, want the canceled job without progress", last)
	}
}

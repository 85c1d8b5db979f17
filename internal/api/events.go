package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// eventsEvery is how often an event stream looks at its job: a running job's progress changes
// at most four times a second, and a look at a job running here costs no database query.
const eventsEvery = 500 * time.Millisecond

// handleEvents streams a job as Server-Sent Events: an event "job" whose data is the Job JSON,
// at once and whenever it changes, until the job is finished (the stream then ends), deleted,
// the client goes, or stop is closed (the server is shutting down: a stream must not hold the
// drain; an EventSource reconnects by itself).
func handleEvents(svc JobService, stop <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		tenant := tenantOf(r.Context())
		j, err := svc.Get(r.Context(), tenant, id)
		if err != nil {
			jobError(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		tick := time.NewTicker(eventsEvery)
		defer tick.Stop()
		var last []byte
		for {
			b, err := json.Marshal(toJSON(j))
			if err != nil {
				return
			}
			if !bytes.Equal(b, last) {
				if _, err := fmt.Fprintf(w, "event: job\ndata: %s\n\n", b); err != nil || rc.Flush() != nil {
					return
				}
				last = b
			}
			if j.State.Terminal() {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-stop:
				return
			case <-tick.C:
			}
			if j, err = svc.Get(r.Context(), tenant, id); err != nil {
				return
			}
		}
	}
}

package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/testkit"
)

func TestNumbered(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"SELECT 1", "SELECT 1"},
		{"UPDATE t SET a = ? WHERE id = ? AND s IN (?,?)", "UPDATE t SET a = $1 WHERE id = $2 AND s IN ($3,$4)"},
		{"? LIMIT ?", "$1 LIMIT $2"},
	} {
		if got := numbered(c.in); got != c.want {
			t.Errorf("numbered(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// A second job with a tenant's idempotency key is refused by either database with an error
// isUniqueViolation recognizes: Submit's answer to two requests racing with one key.
func TestUniqueViolation(t *testing.T) {
	for name, database := range map[string]func(t *testing.T) string{
		"sqlite":   func(*testing.T) string { return "" },
		"postgres": func(t *testing.T) string { return testkit.StartPostgres(t) },
	} {
		t.Run(name, func(t *testing.T) {
			s, err := Open(t.Context(), Config{Dir: t.TempDir(), Database: database(t), Converter: convert.InProcess{}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			now := time.Now()
			job := func(id string) *Job {
				return &Job{ID: id, Tenant: "t", State: StateQueued, Filename: "m.pt", Mode: ModeConvert,
					InputSHA256: "abc", IdempotencyKey: "k", CreatedAt: now, UpdatedAt: now}
			}
			if err := insertJob(context.Background(), s.db, job("j1")); err != nil {
				t.Fatal(err)
			}
			err = insertJob(context.Background(), s.db, job("j2"))
			if !isUniqueViolation(err) {
				t.Errorf("second job with the key: %v; want a unique violation", err)
			}
		})
	}
}

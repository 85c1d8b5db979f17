package jobs

import "testing"

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

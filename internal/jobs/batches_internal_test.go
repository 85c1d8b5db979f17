package jobs

import (
	"errors"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Only the last attempt of a batch's entry that failed, and was not canceled, is given up:
// the batch then records the failure, since River tries no more.
func TestGaveUp(t *testing.T) {
	fail := errors.New("database gone")
	for _, tc := range []struct {
		attempt int
		err     error
		want    bool
	}{
		{batchAttempts, fail, true},
		{batchAttempts - 1, fail, false},
		{batchAttempts, nil, false},
		{batchAttempts, river.JobCancel(fail), false},
	} {
		rj := &rivertype.JobRow{Attempt: tc.attempt, MaxAttempts: batchUnitArgs{}.InsertOpts().MaxAttempts}
		if got := gaveUp(rj, tc.err); got != tc.want {
			t.Errorf("attempt %d of %d, error %v: gaveUp = %v, want %v", tc.attempt, rj.MaxAttempts, tc.err, got, tc.want)
		}
	}
}

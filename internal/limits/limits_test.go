package limits

import (
	"flag"
	"io"
	"math"
	"testing"
)

// TestOrDefault checks that a zero field takes its default and a set field is kept.
func TestOrDefault(t *testing.T) {
	got := Limits{MaxOutputRatio: 2}.OrDefault()
	d := Default()
	if got.MaxOutputRatio != 2 {
		t.Errorf("MaxOutputRatio = %d; want the 2 that was set", got.MaxOutputRatio)
	}
	if got.MaxOutputSlack != d.MaxOutputSlack || got.MaxDroppedListed != d.MaxDroppedListed || got.MaxPickleBytes != d.MaxPickleBytes {
		t.Errorf("zero fields not defaulted: %+v", got)
	}
	if (Limits{}).OrDefault() != d {
		t.Errorf("Limits{}.OrDefault() differs from Default()")
	}
}

// TestOutputBudget checks the relative output bound, including inputs and ratios whose product
// would overflow.
func TestOutputBudget(t *testing.T) {
	cases := []struct {
		name  string
		l     Limits
		input int64
		want  int64
	}{
		{"defaults, 486-byte input", Default(), 486, 16*486 + 64<<20},
		{"defaults, 1 GiB input", Default(), 1 << 30, 16<<30 + 64<<20},
		{"empty input gets the slack", Limits{MaxOutputRatio: 16, MaxOutputSlack: 100}, 0, 100},
		{"overflow saturates", Limits{MaxOutputRatio: 1 << 30, MaxOutputSlack: 1}, 1 << 40, math.MaxInt64},
		{"negative fields count as zero", Limits{MaxOutputRatio: -3, MaxOutputSlack: -5}, 1000, 0},
	}
	for _, c := range cases {
		if got := c.l.OutputBudget(c.input); got != c.want {
			t.Errorf("%s: OutputBudget(%d) = %d; want %d", c.name, c.input, got, c.want)
		}
	}
}

// TestRegisterFlags checks the precedence flag > environment > default for the limits, and
// that an environment value that does not parse is an error naming the variable.
func TestRegisterFlags(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(Limits) bool
		wantErr bool
	}{
		{"default", nil, nil, func(l Limits) bool { return l.MaxOutputRatio == 16 && l.MaxOutputSlack == 64<<20 }, false},
		{"environment", map[string]string{"CONVERTER_LIMIT_MAX_OUTPUT_RATIO": "4", "CONVERTER_LIMIT_MAX_DROPPED_LISTED": "7"}, nil,
			func(l Limits) bool { return l.MaxOutputRatio == 4 && l.MaxDroppedListed == 7 }, false},
		{"flag over environment", map[string]string{"CONVERTER_LIMIT_MAX_OUTPUT_SLACK": "10"}, []string{"-limit-max-output-slack=20"},
			func(l Limits) bool { return l.MaxOutputSlack == 20 }, false},
		{"timeout", map[string]string{"CONVERTER_LIMIT_TIMEOUT": "90s"}, nil,
			func(l Limits) bool { return l.Timeout.Seconds() == 90 }, false},
		{"bad environment value", map[string]string{"CONVERTER_LIMIT_MAX_OUTPUT_RATIO": "x"}, nil, nil, true},
		{"non-positive environment value", map[string]string{"CONVERTER_LIMIT_MAX_OUTPUT_SLACK": "0"}, nil, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := Default()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			err := l.RegisterFlags(fs, func(k string) string { return c.env[k] })
			if c.wantErr {
				if err == nil {
					t.Fatal("no error; want one for the bad environment value")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := fs.Parse(c.args); err != nil {
				t.Fatal(err)
			}
			if !c.check(l) {
				t.Errorf("limits after env %v and args %v: %+v", c.env, c.args, l)
			}
		})
	}
}

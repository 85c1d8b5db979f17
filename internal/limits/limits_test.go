package limits_test

import (
	"flag"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/ptsafe/converter/internal/limits"
)

// flagName is the flag a Limits field is bound to: MaxFileBytes -> limit-max-file-bytes.
func flagName(field string) string {
	var b strings.Builder
	b.WriteString("limit")
	for _, r := range field {
		if unicode.IsUpper(r) {
			b.WriteByte('-')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// fields lists the Limits fields by name, so that these tests cover a field added later.
func fields(t *testing.T) []string {
	t.Helper()
	typ := reflect.TypeFor[limits.Limits]()
	var names []string
	for i := range typ.NumField() {
		names = append(names, typ.Field(i).Name)
	}
	if len(names) == 0 {
		t.Fatal("Limits has no fields")
	}
	return names
}

// TestDefaultSetsEveryField: a zero limit would mean "nothing is allowed" or, worse, be read as
// "unbounded" by a careless check, so every default must be positive.
func TestDefaultSetsEveryField(t *testing.T) {
	t.Parallel()
	d := reflect.ValueOf(limits.Default())
	for _, name := range fields(t) {
		if v := d.FieldByName(name); v.Int() <= 0 {
			t.Errorf("Default().%s = %v; want a positive default", name, v)
		}
	}
}

// TestOrDefault: a caller that sets one limit keeps it and gets the defaults for the rest.
func TestOrDefault(t *testing.T) {
	t.Parallel()
	if got, want := (limits.Limits{}).OrDefault(), limits.Default(); got != want {
		t.Errorf("zero Limits: OrDefault() = %+v, want Default() %+v", got, want)
	}
	for _, name := range fields(t) {
		var l limits.Limits
		reflect.ValueOf(&l).Elem().FieldByName(name).SetInt(3)
		got := reflect.ValueOf(l.OrDefault())
		want := reflect.ValueOf(limits.Default())
		for _, other := range fields(t) {
			g := got.FieldByName(other).Int()
			w := want.FieldByName(other).Int()
			if other == name {
				w = 3
			}
			if g != w {
				t.Errorf("only %s set: OrDefault().%s = %d, want %d", name, other, g, w)
			}
		}
	}
}

// register binds a fresh Default() to a flag set with the given environment.
func register(t *testing.T, env map[string]string) (*limits.Limits, *flag.FlagSet, error) {
	t.Helper()
	l := limits.Default()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	err := l.RegisterFlags(fs, func(k string) string { return env[k] })
	return &l, fs, err
}

// TestEveryLimitHasAFlag: README promises a --limit-NAME flag for every limit.
func TestEveryLimitHasAFlag(t *testing.T) {
	t.Parallel()
	_, fs, err := register(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range fields(t) {
		f := fs.Lookup(flagName(name))
		if f == nil {
			t.Errorf("no flag %s for Limits.%s", flagName(name), name)
			continue
		}
		env := "CONVERTER_" + strings.ToUpper(strings.ReplaceAll(flagName(name), "-", "_"))
		if !strings.Contains(f.Usage, env) {
			t.Errorf("flag %s usage %q does not name its environment variable %s", f.Name, f.Usage, env)
		}
	}
}

// TestRegisterFlags checks the precedence flag > environment > default, and that a bad
// environment value is an error naming the variable rather than a silent default.
func TestRegisterFlags(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(l *limits.Limits) bool
		wantErr string // substring of RegisterFlags' or Parse's error
	}{
		{name: "default", check: func(l *limits.Limits) bool { return *l == limits.Default() }},
		{name: "flag", args: []string{"-limit-max-dims", "3"},
			check: func(l *limits.Limits) bool { return l.MaxDims == 3 }},
		{name: "env", env: map[string]string{"CONVERTER_LIMIT_MAX_TENSORS": "7"},
			check: func(l *limits.Limits) bool { return l.MaxTensors == 7 }},
		{name: "int64 env", env: map[string]string{"CONVERTER_LIMIT_MAX_FILE_BYTES": "4096"},
			check: func(l *limits.Limits) bool { return l.MaxFileBytes == 4096 }},
		{name: "flag beats env", env: map[string]string{"CONVERTER_LIMIT_MAX_TENSORS": "7"}, args: []string{"--limit-max-tensors=9"},
			check: func(l *limits.Limits) bool { return l.MaxTensors == 9 }},
		{name: "timeout env", env: map[string]string{"CONVERTER_LIMIT_TIMEOUT": "90s"},
			check: func(l *limits.Limits) bool { return l.Timeout == 90*time.Second }},
		{name: "timeout flag", args: []string{"-limit-timeout", "2m"},
			check: func(l *limits.Limits) bool { return l.Timeout == 2*time.Minute }},
		{name: "env not a number", env: map[string]string{"CONVERTER_LIMIT_MAX_DIMS": "many"}, wantErr: "CONVERTER_LIMIT_MAX_DIMS"},
		{name: "env zero", env: map[string]string{"CONVERTER_LIMIT_MAX_MEMO": "0"}, wantErr: "CONVERTER_LIMIT_MAX_MEMO"},
		{name: "env negative int64", env: map[string]string{"CONVERTER_LIMIT_MAX_OUTPUT_BYTES": "-1"}, wantErr: "CONVERTER_LIMIT_MAX_OUTPUT_BYTES"},
		{name: "env bad duration", env: map[string]string{"CONVERTER_LIMIT_TIMEOUT": "soon"}, wantErr: "CONVERTER_LIMIT_TIMEOUT"},
		{name: "flag not a number", args: []string{"-limit-max-dims", "x"}, wantErr: "limit-max-dims"},
		{name: "flag zero", args: []string{"-limit-max-dims", "0"}, wantErr: "positive"},
		{name: "flag beyond int", args: []string{"-limit-max-memo", "99999999999999999999"}, wantErr: "positive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			l, fs, err := register(t, c.env)
			if err == nil {
				err = fs.Parse(c.args)
			}
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v; want one naming %s", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(l) {
				t.Errorf("limits after env %v and args %v: %+v", c.env, c.args, *l)
			}
		})
	}
}

// TestOutputBudget checks the relative output bound, including inputs and ratios whose product
// would overflow.
func TestOutputBudget(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		l     limits.Limits
		input int64
		want  int64
	}{
		{"defaults, 486-byte input", limits.Default(), 486, 16*486 + 64<<20},
		{"defaults, 1 GiB input", limits.Default(), 1 << 30, 16<<30 + 64<<20},
		{"empty input gets the slack", limits.Limits{MaxOutputRatio: 16, MaxOutputSlack: 100}, 0, 100},
		{"overflow saturates", limits.Limits{MaxOutputRatio: 1 << 30, MaxOutputSlack: 1}, 1 << 40, math.MaxInt64},
		{"negative fields count as zero", limits.Limits{MaxOutputRatio: -3, MaxOutputSlack: -5}, 1000, 0},
	}
	for _, c := range cases {
		if got := c.l.OutputBudget(c.input); got != c.want {
			t.Errorf("%s: OutputBudget(%d) = %d; want %d", c.name, c.input, got, c.want)
		}
	}
}

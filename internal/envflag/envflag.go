// Package envflag is the one way a converter command reads a flag's environment fallback: the
// flag NAME falls back to the variable CONVERTER_NAME (upper case, '-' as '_'), parsed exactly
// as the command line would parse the flag, and the command line wins over it.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// Name returns the environment variable that stands in for the flag name:
// limit-max-tensors -> CONVERTER_LIMIT_MAX_TENSORS.
func Name(flagName string) string {
	return "CONVERTER_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Bind makes each named flag of fs, already defined, fall back to its environment variable:
// when getenv returns a value for it, the flag is set to that value before the command line is
// parsed, and help shows it as the default. Each flag's usage names its variable. The error
// names the variable of every value that does not parse; Bind panics on a name fs does not
// define, a programming error.
func Bind(fs *flag.FlagSet, getenv func(string) string, names ...string) error {
	var errs []error
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil {
			panic("envflag: no flag " + name)
		}
		env := Name(name)
		f.Usage += " (env " + env + ")"
		v := getenv(env)
		if v == "" {
			continue
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			continue
		}
		f.DefValue = f.Value.String()
	}
	return errors.Join(errs...)
}

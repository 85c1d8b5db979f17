package fault_test

import (
	"errors"
	"fmt"

	"github.com/ptsafe/converter/internal/fault"
)

// A caller picks its answer from the kind of a failure, however deeply it is wrapped, and never
// from the message text.
func ExampleKindOf() {
	err := fmt.Errorf("convert model.pt: %w",
		fault.At(fault.Unsafe, "archive/data.pkl", 42, "global %s is known-dangerous", "os.system"))

	fmt.Println(fault.KindOf(err), fault.KindOf(err).ExitCode())
	fmt.Println(fault.KindOf(errors.New("disk full")))
	fmt.Println(err)
	// Output:
	// unsafe 3
	// internal
	// convert model.pt: unsafe: archive/data.pkl@42: global os.system is known-dangerous
}

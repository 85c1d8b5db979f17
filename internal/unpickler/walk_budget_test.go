package unpickler

import (
	"testing"

	"github.com/nlpodyssey/gopickle/types"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

func budgetTensor() *TensorRef {
	st := &StorageRef{Key: "0", DType: dtype.F32, NBytes: 16}
	return &TensorRef{Storage: st, DType: dtype.F32, Shape: []int64{4}, Stride: []int64{1}}
}

// sharedDAG returns {"a": prev, "b": prev} nested levels deep over one tensor: 2^levels paths.
func sharedDAG(levels int) any {
	var prev any = budgetTensor()
	for range levels {
		d := types.NewDict()
		d.Set("a", prev)
		d.Set("b", prev)
		prev = d
	}
	return prev
}

// TestFlattenBudget checks that the object-graph walk refuses, with a classified fault and
// before building any name, graphs whose walk would not end or would not fit in memory, and
// still names every path of a graph that shares subtrees within the budget.
func TestFlattenBudget(t *testing.T) {
	deep := types.NewList()
	for cur, i := deep, 0; i < 100_000; i++ {
		next := types.NewList()
		cur.Append(next)
		cur = next
	}
	selfList := types.NewList()
	selfList.Append(selfList)
	a, b := types.NewDict(), types.NewList()
	a.Set("w", budgetTensor())
	a.Set("l", b)
	b.Append(a)

	lim := limits.Default()
	cases := []struct {
		name string
		root any
		want fault.Kind
		why  string
	}{
		{"dag-2^100-paths", sharedDAG(100), fault.Limit, "2^100 names from 100 dicts: the budget must fail before enumerating"},
		{"dag-2^30-paths", sharedDAG(30), fault.Limit, "one billion names: over max-walk-nodes, refused before any name is built"},
		{"dag-2^22-paths", sharedDAG(22), fault.Limit, "4M names of 44 bytes are within max-tensors but not within max-header-bytes"},
		{"list-nested-100k-deep", deep, fault.Limit, "nesting built through the memo is invisible to the pre-scanner"},
		{"list-contains-itself", selfList, fault.Malformed, "a cycle of one"},
		{"dict-list-cycle-next-to-tensor", a, fault.Malformed, "a cycle reached after a real tensor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tree, err := Flatten(c.root, "", "data.pkl", lim)
			if err == nil {
				t.Fatalf("flattened to %d tensors; want %s (%s)", len(tree.Tensors), c.want, c.why)
			}
			if got := fault.KindOf(err); got != c.want {
				t.Fatalf("error kind %s (%v); want %s (%s)", got, err, c.want, c.why)
			}
		})
	}

	// The refusal must come from measuring, not from enumerating names until a limit trips:
	// without it the 2^30 case allocates millions of names before failing.
	for _, levels := range []int{22, 30} {
		root := sharedDAG(levels)
		if allocs := testing.AllocsPerRun(1, func() { Flatten(root, "", "data.pkl", lim) }); allocs > 10_000 {
			t.Errorf("refusing 2^%d paths took %.0f allocations; want it refused before naming paths", levels, allocs)
		}
	}

	// Within the budget, sharing is legitimate (tied weights, {"model": sd, "ema": sd}): every
	// path is named.
	tree, err := Flatten(sharedDAG(10), "", "data.pkl", lim)
	if err != nil {
		t.Fatalf("shared DAG of 1024 paths: %v", err)
	}
	if got, want := len(tree.Tensors), 1024; got != want {
		t.Fatalf("shared DAG named %d tensors, want %d", got, want)
	}
}

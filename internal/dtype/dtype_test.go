package dtype

import "testing"

func TestTableRoundTrips(t *testing.T) {
	for d := BOOL; d <= U64; d++ {
		if got, ok := Parse(d.String()); !ok || got != d {
			t.Errorf("Parse(%q) = %v, %v; want %v", d.String(), got, ok, d)
		}
		if got, ok := FromTorch(d.Torch()); !ok || got != d {
			t.Errorf("FromTorch(%q) = %v, %v; want %v", d.Torch(), got, ok, d)
		}
		if d.Size() == 0 || d.SwapUnit() == 0 || d.Size()%d.SwapUnit() != 0 {
			t.Errorf("%v: size %d, swap unit %d", d, d.Size(), d.SwapUnit())
		}
	}
	// The writer orders by rank descending so that every tensor starts aligned to its size: a
	// higher rank must never have a smaller element size.
	for a := BOOL; a <= U64; a++ {
		for b := BOOL; b <= U64; b++ {
			if a.Rank() > b.Rank() && a.Size() < b.Size() {
				t.Errorf("%v ranks above %v but is smaller", a, b)
			}
		}
	}
	if _, ok := Parse("f32"); ok {
		t.Error("dtype names are case-sensitive")
	}
	if d, ok := FromStorageClass("BFloat16Storage"); !ok || d != BF16 {
		t.Errorf("BFloat16Storage = %v", d)
	}
	if _, ok := FromStorageClass("QInt8Storage"); ok {
		t.Error("quantized storage must not map to a dtype")
	}
}

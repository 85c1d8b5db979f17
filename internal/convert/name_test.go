package convert

import "testing"

func TestOutputName(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"pytorch_model.bin", "model.safetensors"},
		{"pytorch_model-00001-of-00002.bin", "model-00001-of-00002.safetensors"},
		{"pytorch_model-00002-of-00002.bin", "model-00002-of-00002.safetensors"},
		{"mymodel.pt", "mymodel.safetensors"},
		{"weights.pth", "weights.safetensors"},
		{"last.ckpt", "last.safetensors"},
		{"LAST.CKPT", "LAST.safetensors"},
		{"my.model.v2.bin", "my.model.v2.safetensors"},
		{"archive.tar", "archive.tar.safetensors"},
		{"pytorch_model.bin.bak", "pytorch_model.bin.bak.safetensors"},
		{".pt", "model.safetensors"},
	} {
		if got := OutputName(c.in); got != c.want {
			t.Errorf("OutputName(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

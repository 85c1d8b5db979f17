package convert

import (
	"path"
	"regexp"
	"strings"
)

var shardedBin = regexp.MustCompile(`^pytorch_model(-\d+-of-\d+)?\.bin$`)

// OutputName is the Hugging Face name of the safetensors file converted from the checkpoint
// file name base: pytorch_model.bin -> model.safetensors, pytorch_model-00001-of-00002.bin ->
// model-00001-of-00002.safetensors, NAME.{bin,pt,pth,ckpt} -> NAME.safetensors, and any other
// NAME -> NAME.safetensors.
func OutputName(base string) string {
	if m := shardedBin.FindStringSubmatch(base); m != nil {
		return "model" + m[1] + ".safetensors"
	}
	ext := path.Ext(base)
	switch strings.ToLower(ext) {
	case ".bin", ".pt", ".pth", ".ckpt":
		base = strings.TrimSuffix(base, ext)
	}
	if base == "" {
		base = "model"
	}
	return base + ".safetensors"
}

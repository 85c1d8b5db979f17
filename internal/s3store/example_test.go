package s3store_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/ptsafe/converter/internal/s3store"
	"github.com/ptsafe/converter/internal/store"
)

// Walk a model store on an S3-compatible server and put a file beside it. Credentials and the
// region come from the SDK's standard chain (AWS_ACCESS_KEY_ID, ~/.aws, ...).
func ExampleNew() {
	ctx := context.Background()
	tree, err := s3store.New(ctx, "s3://models/hub/bert-base", s3store.Config{Endpoint: "http://127.0.0.1:7070"})
	if err != nil {
		log.Fatal(err)
	}
	err = tree.Walk(ctx, func(o store.Object, skip error) error {
		if skip != nil {
			fmt.Println("not followed:", skip)
			return nil
		}
		fmt.Println(o.Path, o.Size, o.ETag)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	const config = `{"architectures": ["BertModel"]}`
	if err := tree.Put(ctx, "config.json", strings.NewReader(config), int64(len(config)), ""); err != nil {
		log.Fatal(err)
	}
}

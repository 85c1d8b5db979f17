package api_test

import (
	"os"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"

	"github.com/ptsafe/converter/internal/testkit"
)

// TestMain lets the contract check read the web page's text bodies (kin-openapi decodes JSON,
// YAML, forms and text/plain only; its registry is global, so it is filled once, before any test
// runs), stops the browser the page's tests share, and the PostgreSQL cluster the batch tests
// share.
func TestMain(m *testing.M) {
	for _, ct := range []string{"text/html", "text/css", "text/javascript"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
	code := testkit.PostgresMain(m)
	stopBrowser()
	os.Exit(code)
}

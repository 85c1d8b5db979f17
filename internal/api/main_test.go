package api_test

import (
	"os"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
)

// TestMain lets the contract check read the web page's text bodies (kin-openapi decodes JSON,
// YAML, forms and text/plain only; its registry is global, so it is filled once, before any test
// runs), and stops the browser the page's tests share.
func TestMain(m *testing.M) {
	for _, ct := range []string{"text/html", "text/css", "text/javascript"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
	code := m.Run()
	stopBrowser()
	os.Exit(code)
}

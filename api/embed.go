// Package api holds the service's HTTP contract, api/openapi.yaml, embedded so that the server
// can serve it and tests can check the handlers against it.
package api

import _ "embed"

// OpenAPI is the OpenAPI 3.0 document of the job service.
//
//go:embed openapi.yaml
var OpenAPI []byte

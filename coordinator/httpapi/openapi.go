package httpapi

import (
	_ "embed"
	"encoding/json"
)

// openapiDoc is the OpenAPI 3 description of the API. TestOpenAPIMatchesRoutes
// keeps it and Routes in step.
//
//go:embed openapi.json
var openapiDoc []byte

// OpenAPI returns the OpenAPI document.
func OpenAPI() []byte { return openapiDoc }

func (a *API) openapi(c *call) (any, error) {
	return json.RawMessage(openapiDoc), nil
}

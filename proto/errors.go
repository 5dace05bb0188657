package proto

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Code is a machine-readable error class. Each maps to one HTTP status.
type Code string

// Error codes.
const (
	CodeInvalid      Code = "invalid"       // 400: a bad body or field
	CodeUnauthorized Code = "unauthorized"  // 401: no or unknown token
	CodeForbidden    Code = "forbidden"     // 403: the token's role may not do this
	CodeNotFound     Code = "not_found"     // 404
	CodeConflict     Code = "conflict"      // 409: name taken, object in use
	CodeWrongState   Code = "wrong_state"   // 409: a transition from the wrong state
	CodeTooLarge     Code = "too_large"     // 413
	CodeNoLeader     Code = "no_leader"     // 503: no Raft leader within the wait
	CodeUnavailable  Code = "unavailable"   // 503: another passing condition
	CodeInternal     Code = "internal"      // 500
	CodeNotAllowed   Code = "not_allowed"   // 405
	CodeTimeout      Code = "timeout"       // 504: a write did not commit in time
	CodeUnsupported  Code = "not_supported" // 501: needs a later feature
	// CodeUndecodable: 400, the body could not be decoded at all (not
	// JSON, a field of another type, a field this side does not know).
	// A rack agent waits such an answer out (version skew) rather than
	// drop its report, which it does for a CodeInvalid content error.
	CodeUndecodable Code = "undecodable"
	CodeRateLimited Code = "rate_limited" // 429: slow down (Retry-After)
)

// Status is the HTTP status for the code.
func (c Code) Status() int {
	switch c {
	case CodeInvalid, CodeUndecodable:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeForbidden:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict, CodeWrongState:
		return http.StatusConflict
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeNoLeader, CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeTimeout:
		return http.StatusGatewayTimeout
	case CodeUnsupported:
		return http.StatusNotImplemented
	case CodeRateLimited:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

// Error is the error every layer returns for a failure a caller should
// see. The API writes it as {"error": {"code": ..., "message": ...}}.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf builds an *Error.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorBody is the JSON envelope of an API error.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// WriteError writes err as an API error: its code's status and the JSON
// envelope (an error that is not an *Error is an internal one).
func WriteError(w http.ResponseWriter, err error) {
	var pe *Error
	if !errors.As(err, &pe) {
		pe = Errorf(CodeInternal, "%v", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(pe.Code.Status())
	_ = json.NewEncoder(w).Encode(ErrorBody{Error: pe})
}

// CodeOf returns the code of err if it is (or wraps) an *Error, else
// CodeInternal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

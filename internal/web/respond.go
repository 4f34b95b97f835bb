package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/heraldhq/herald/internal/problem"
	"github.com/heraldhq/herald/internal/store"
)

// errorBody is the one JSON error shape of the API.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field,omitempty"`
		Details any    `json:"details,omitempty"`
	} `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeProblem(w http.ResponseWriter, _ *http.Request, status int, code, message string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, message
	writeJSON(w, status, b)
}

var kindStatus = map[problem.Kind]int{
	problem.Invalid:         http.StatusBadRequest,
	problem.Unauthenticated: http.StatusUnauthorized,
	problem.Forbidden:       http.StatusForbidden,
	problem.NotFound:        http.StatusNotFound,
	problem.Conflict:        http.StatusConflict,
	problem.TooLarge:        http.StatusRequestEntityTooLarge,
	problem.TooMany:         http.StatusTooManyRequests,
}

// fail answers err: a problem with its status and message, anything else as a logged 500
// whose details stay in the log.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if p, ok := problem.As(err); ok {
		status := kindStatus[p.Kind]
		if status == 0 {
			status = http.StatusBadRequest
		}
		if p.Kind == problem.Unauthenticated {
			w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
		}
		if p.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(p.RetryAfter.Seconds()+0.999)))
		}
		var b errorBody
		b.Error.Code, b.Error.Message, b.Error.Field, b.Error.Details = p.Code, p.Message, p.Field, p.Details
		writeJSON(w, status, b)
		return
	}
	if errors.Is(err, store.ErrNotFound) {
		writeProblem(w, r, http.StatusNotFound, "not_found", err.Error())
		return
	}
	s.Log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeProblem(w, r, http.StatusInternalServerError, "internal", "an internal error occurred; it has been logged")
}

// decode reads the JSON request body into v, refusing bodies over the configured limit,
// unknown fields, trailing data and malformed JSON with a message that says where the problem is.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	return s.decodeLimit(w, r, v, s.Config.MaxBodyBytes)
}

// decodeLimit is decode with a route's own body limit.
func (s *Server) decodeLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return problem.New(problem.Invalid, "unsupported_media_type", "the request body must be JSON (Content-Type: application/json), not %q", ct)
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	data, err := io.ReadAll(body)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return problem.New(problem.TooLarge, "body_too_large", "the request body is over the limit of %d bytes", limit)
	}
	if err != nil {
		return problem.New(problem.Invalid, "unreadable_body", "the request body could not be read: %v", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return problem.New(problem.Invalid, "empty_body", "the request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonProblem(data, err)
	}
	if dec.More() {
		return problem.New(problem.Invalid, "invalid_json", "the request body holds more than one JSON value")
	}
	return nil
}

func jsonProblem(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		line, col := position(data, syn.Offset)
		return problem.New(problem.Invalid, "invalid_json", "the request body is not valid JSON: at line %d, column %d: %v", line, col, syn)
	case errors.As(err, &typ):
		line, col := position(data, typ.Offset)
		return &problem.Error{Kind: problem.Invalid, Code: "invalid_json", Field: typ.Field,
			Message: fmt.Sprintf("field %q must be %s, not a JSON %s (line %d, column %d)", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value, line, col)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return problem.New(problem.Invalid, "invalid_json", "the request body is not valid JSON: it ends too early")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return &problem.Error{Kind: problem.Invalid, Code: "unknown_field", Field: strings.Trim(f, `"`),
			Message: fmt.Sprintf("the request body has an unknown field %s", f)}
	}
	return problem.New(problem.Invalid, "invalid_json", "the request body is not valid JSON: %v", err)
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice", "array":
		return "a list"
	case "map", "struct":
		return "an object"
	case "ptr":
		return "a value"
	}
	return "a number"
}

func position(data []byte, offset int64) (line, col int) {
	line, col = 1, 1
	for i := int64(0); i < offset && i < int64(len(data)); i++ {
		if data[i] == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// pathID parses the {id} path segment.
func pathID(r *http.Request, name string) (int64, error) {
	v := r.PathValue(name)
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, problem.Invalidf(name, "%q is not a valid id: ids are positive whole numbers", v)
	}
	return id, nil
}

// queryInt parses an optional integer query parameter.
func queryInt(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, problem.Invalidf(name, "query parameter %s=%q is not a whole number", name, v)
	}
	return n, nil
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

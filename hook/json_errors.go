package hook

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// jsonDecodeMessage tells a sender what is wrong with its JSON in JSON's
// terms: the field's path and the JSON types wanted and given
// ("push_data.tag: want a string, got a number"), never a Go type or
// struct name. ok is false for an error that is not encoding/json's.
func jsonDecodeMessage(err error) (msg string, ok bool) {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d", se.Offset), true
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "the body"
		}
		got, _, _ := strings.Cut(te.Value, " ") // "number 1.5": not echoed
		want := jsonTypeOf(te.Type)
		if got == "number" && want == "an integer" {
			return fmt.Sprintf("%s: want an integer, got a number with a fraction or out of range", field), true
		}
		return fmt.Sprintf("%s: want %s, got %s", field, want, jsonValueName(got)), true
	case strings.HasPrefix(err.Error(), "json: invalid number literal"):
		// A string where a json.Number is wanted; encoding/json names
		// neither the field nor anything but Go's type.
		return "malformed JSON: a number field holds a string that is not a number", true
	case strings.HasPrefix(err.Error(), "json: "):
		return "malformed JSON", true
	}
	return "", false
}

var jsonNumberType = reflect.TypeFor[json.Number]()

// jsonTypeOf names the JSON type a Go type decodes from.
func jsonTypeOf(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == nil:
		return "a value"
	case t == jsonNumberType:
		return "a number"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "another value"
}

// jsonValueName names the JSON value encoding/json says it found.
func jsonValueName(v string) string {
	switch v {
	case "string":
		return "a string"
	case "number":
		return "a number"
	case "bool":
		return "true or false"
	case "array":
		return "an array"
	case "object":
		return "an object"
	case "null":
		return "null"
	}
	return "another value"
}

// Command conformance runs clients/conformance/cases.json through the Go client and compares
// every reply with the reference answers the harness wrote (see cases.json "about").
//
//	conformance CASES REFERENCE    (REWARDSERVE_TARGET: the demo server)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	rewardserve "github.com/rewardserve/rewardserve/clients/go"
	pb "github.com/rewardserve/rewardserve/clients/go/rewardservev1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

type rule struct {
	abs, rel float64
	ignore   map[string]bool
}

type testCase struct {
	Name    string                     `json:"name"`
	Call    string                     `json:"call"`
	Request map[string]json.RawMessage `json:"request"`
	Expect  map[string]interface{}     `json:"expect"`
}

type suite struct {
	Tolerance struct{ Abs, Rel float64 } `json:"tolerance"`
	Ignore    []string                   `json:"ignore"`
	Cases     []testCase                 `json:"cases"`
}

func isZero(v interface{}) bool {
	switch x := v.(type) {
	case nil:
		return true
	case float64:
		return x == 0
	case bool:
		return !x
	case string:
		return x == ""
	case []interface{}:
		return len(x) == 0
	case map[string]interface{}:
		return len(x) == 0
	}
	return false
}

func number(v interface{}) (float64, bool) {
	switch x := v.(type) {
	case nil:
		return 0, true
	case float64:
		return x, true
	case string: // proto3 JSON writes 64-bit integers and NaN/Infinity as strings
		var f float64
		_, err := fmt.Sscan(x, &f)
		return f, err == nil
	}
	return 0, false
}

// differences is where actual departs from expected: the rule of cases.json.
func differences(expected, actual interface{}, r rule, path string) []string {
	e, eObj := expected.(map[string]interface{})
	a, aObj := actual.(map[string]interface{})
	if eObj || aObj {
		if isZero(expected) && isZero(actual) {
			return nil
		}
		if !eObj || !aObj {
			return []string{fmt.Sprintf("%s: expected %v, got %v", path, expected, actual)}
		}
		keys := map[string]bool{}
		for k := range e {
			keys[k] = true
		}
		for k := range a {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		var out []string
		for _, k := range sorted {
			if !r.ignore[k] {
				out = append(out, differences(e[k], a[k], r, path+"."+k)...)
			}
		}
		return out
	}
	el, eList := expected.([]interface{})
	al, aList := actual.([]interface{})
	if eList || aList {
		if len(el) != len(al) || (expected != nil && !eList) || (actual != nil && !aList) {
			return []string{fmt.Sprintf("%s: expected %d items, got %v", path, len(el), actual)}
		}
		var out []string
		for i := range el {
			out = append(out, differences(el[i], al[i], r, fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	}
	_, eNum := expected.(float64)
	_, aNum := actual.(float64)
	if eNum || aNum {
		x, okE := number(expected)
		y, okA := number(actual)
		if !okE || !okA || math.Abs(y-x) > r.abs+r.rel*math.Abs(x) {
			return []string{fmt.Sprintf("%s: expected %v, got %v", path, expected, actual)}
		}
		return nil
	}
	if (isZero(expected) && isZero(actual)) || expected == actual {
		return nil
	}
	return []string{fmt.Sprintf("%s: expected %v, got %v", path, expected, actual)}
}

// names reports whether an error message names field: it starts with it or contains "field:".
func names(message, field string) bool {
	return strings.HasPrefix(message, field) || strings.Contains(message, field+":")
}

func asJSON(m proto.Message) interface{} {
	data, err := protojson.Marshal(m)
	if err != nil {
		panic(err)
	}
	var out interface{}
	if err := json.Unmarshal(data, &out); err != nil {
		panic(err)
	}
	return out
}

func parse(raw json.RawMessage, m proto.Message) proto.Message {
	if len(raw) == 0 {
		raw = json.RawMessage("{}")
	}
	if err := protojson.Unmarshal(raw, m); err != nil {
		panic(err)
	}
	return m
}

func codeName(c codes.Code) string {
	// codes.Code.String() gives "InvalidArgument"; gRPC's spelling is INVALID_ARGUMENT.
	var b strings.Builder
	for i, ch := range c.String() {
		if i > 0 && ch >= 'A' && ch <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(ch)
	}
	return strings.ToUpper(b.String())
}

func outcome(reply proto.Message, err error) map[string]interface{} {
	if err == nil {
		return map[string]interface{}{"ok": asJSON(reply)}
	}
	var failure *rewardserve.Error
	if !errors.As(err, &failure) {
		panic(err)
	}
	field := ""
	if len(failure.FieldViolations) > 0 {
		field = failure.FieldViolations[0].Field
	}
	return map[string]interface{}{"code": codeName(failure.Code), "field": field, "message": failure.Message}
}

func run(client *rewardserve.Client, c testCase) interface{} {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	whole, _ := json.Marshal(c.Request)
	switch c.Call {
	case "modelInfo":
		reply, err := client.ModelInfo(ctx)
		return outcome(reply, err)
	case "encode":
		reply, err := client.Encode(ctx, parse(whole, &pb.EncodeRequest{}).(*pb.EncodeRequest))
		return outcome(reply, err)
	case "chatReward":
		reply, err := client.ChatReward(ctx, parse(whole, &pb.ChatRewardRequest{}).(*pb.ChatRewardRequest))
		return outcome(reply, err)
	case "score":
		req := parse(whole, &pb.ScoreRequest{}).(*pb.ScoreRequest)
		reply, err := client.Score(ctx, req.Query, req.Documents, rewardserve.ScoreOptions{TopN: req.TopN,
			Truncation: req.Truncation, Instruction: req.Instruction, Priority: req.Priority, RequestID: req.RequestId})
		return outcome(reply, err)
	case "streamReward":
		var rawItems []json.RawMessage
		if err := json.Unmarshal(c.Request["items"], &rawItems); err != nil {
			panic(err)
		}
		items := make(chan *pb.StreamItem, len(rawItems))
		for _, raw := range rawItems {
			items <- parse(raw, &pb.StreamItem{}).(*pb.StreamItem)
		}
		close(items)
		options := parse(c.Request["options"], &pb.StreamRewardOptions{}).(*pb.StreamRewardOptions)
		stream, err := client.StreamReward(ctx, options, items)
		if err != nil {
			panic(err)
		}
		defer stream.Close()
		answers := map[string]interface{}{}
		for {
			answer, err := stream.Recv()
			if err == io.EOF {
				return answers
			}
			if err != nil {
				panic(err)
			}
			entry := map[string]interface{}{}
			if answer.Result != nil {
				entry["ok"] = asJSON(answer.Result)
			} else {
				entry["code"], entry["message"] = codeName(answer.Err.Code), answer.Err.Message
			}
			list, _ := answers[answer.ID].([]interface{})
			answers[answer.ID] = append(list, entry)
		}
	}
	panic("unknown call " + c.Call)
}

func compare(c testCase, ref, got interface{}, r rule) []string {
	refMap, _ := ref.(map[string]interface{})
	gotMap, _ := got.(map[string]interface{})
	if want, ok := c.Expect["answers"].(map[string]interface{}); ok {
		var out []string
		ids := map[string]bool{}
		for id := range refMap {
			ids[id] = true
		}
		for id := range gotMap {
			ids[id] = true
		}
		for id := range ids {
			expected, _ := refMap[id].([]interface{})
			actual, _ := gotMap[id].([]interface{})
			if len(expected) != len(actual) {
				out = append(out, fmt.Sprintf("item %q: %d answers, expected %d", id, len(actual), len(expected)))
				continue
			}
			for i := range expected {
				e, a := expected[i].(map[string]interface{}), actual[i].(map[string]interface{})
				if okRef, isOK := e["ok"]; isOK {
					for _, d := range differences(okRef, a["ok"], r, "$") {
						out = append(out, fmt.Sprintf("item %q: %s", id, d))
					}
				} else if w := want[id].(map[string]interface{}); str(a["code"]) != str(e["code"]) || !names(str(a["message"]), str(w["field"])) {
					out = append(out, fmt.Sprintf("item %q: expected %v, got %v", id, w, a))
				}
			}
		}
		sort.Strings(out)
		return out
	}
	if okRef, isOK := refMap["ok"]; isOK {
		okGot, gotOK := gotMap["ok"]
		if !gotOK {
			return []string{fmt.Sprintf("expected success, got %v", got)}
		}
		return differences(okRef, okGot, r, "$")
	}
	field := str(c.Expect["field"])
	if str(gotMap["code"]) != str(c.Expect["code"]) || (str(gotMap["field"]) != field && !names(str(gotMap["message"]), field)) {
		return []string{fmt.Sprintf("expected %v, got %v", c.Expect, got)}
	}
	return nil
}

func load(path string, into interface{}) {
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, into)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: conformance CASES REFERENCE")
		os.Exit(2)
	}
	var s suite
	var reference map[string]interface{}
	load(os.Args[1], &s)
	load(os.Args[2], &reference)
	r := rule{abs: s.Tolerance.Abs, rel: s.Tolerance.Rel, ignore: map[string]bool{}}
	for _, k := range s.Ignore {
		r.ignore[k] = true
	}
	client, err := rewardserve.Dial(os.Getenv("REWARDSERVE_TARGET"), rewardserve.Options{Timeout: time.Minute})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer client.Close()
	passed, failed := 0, 0
	for _, c := range s.Cases {
		if problems := compare(c, reference[c.Name], run(client, c), r); len(problems) > 0 {
			failed++
			if len(problems) > 5 {
				problems = problems[:5]
			}
			fmt.Printf("FAIL %s: %s\n", c.Name, strings.Join(problems, "; "))
		} else {
			passed++
		}
	}
	fmt.Printf("go: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

func str(v interface{}) string {
	s, _ := v.(string)
	return s
}

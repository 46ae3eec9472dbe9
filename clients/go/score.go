package rewardserve

import (
	"context"
	"fmt"

	pb "github.com/rewardserve/rewardserve/clients/go/rewardservev1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// ScoreOptions are a Score call's request fields; the zero value takes the server's defaults.
type ScoreOptions struct {
	// TopN keeps the best N results, best first; 0: every result, in document order.
	TopN uint32
	// Truncation cuts over-long pairs (only the document is cut; TruncatePromptTokens -1: the
	// model's maximum); nil refuses over-long pairs.
	Truncation *pb.Truncation
	// Instruction is a decoder reranker's instruction (e.g. Qwen3-Reranker's "<Instruct>");
	// other models refuse one.
	Instruction string
	// Priority: lower values run first.
	Priority int32
	// RequestID is sent as the request's request_id and x-request-id; empty: a new one.
	RequestID string
}

// ScoreText is a query or document given as text.
func ScoreText(text string) *pb.ScoreInput {
	return &pb.ScoreInput{Input: &pb.ScoreInput_Text{Text: text}}
}

// ScoreTokenIDs is a query or document given as token ids of the served model's tokenizer,
// without special tokens (the server adds the pair's own).
func ScoreTokenIDs(ids ...uint32) *pb.ScoreInput {
	return &pb.ScoreInput{Input: &pb.ScoreInput_TokenIds{TokenIds: &pb.TokenIds{Ids: ids}}}
}

// Score scores query against each document (Score RPC): cross-encoders and rerankers read each
// pair, embedding models give cosine similarities. Results come in document order, or the best
// opts.TopN best first. A missing query or document and an empty documents list are refused
// before sending, with an *Error (INVALID_ARGUMENT) whose message leads with the parameter, e.g.
// "documents: must not be empty (score)".
func (c *Client) Score(ctx context.Context, query *pb.ScoreInput, documents []*pb.ScoreInput, opts ScoreOptions) (*pb.ScoreResponse, error) {
	req, refusal := scoreRequest(query, documents, opts)
	if refusal != nil {
		return nil, refusal
	}
	var reply *pb.ScoreResponse
	err := c.unary(ctx, req.RequestId, func(ctx context.Context, callOpts ...grpc.CallOption) (err error) {
		reply, err = c.stub.Score(ctx, req, callOpts...)
		return err
	})
	return reply, err
}

func scoreRequest(query *pb.ScoreInput, documents []*pb.ScoreInput, opts ScoreOptions) (*pb.ScoreRequest, *Error) {
	if query.GetInput() == nil {
		return nil, invalidArgument("query", "expected text or token ids, got none")
	}
	if len(documents) == 0 {
		return nil, invalidArgument("documents", "must not be empty (score)")
	}
	for i, doc := range documents {
		if doc.GetInput() == nil {
			return nil, invalidArgument(fmt.Sprintf("documents[%d]", i), "expected text or token ids, got none")
		}
	}
	requestID := opts.RequestID
	if requestID == "" {
		requestID = NewRequestID()
	}
	return &pb.ScoreRequest{Query: query, Documents: documents, TopN: opts.TopN, Truncation: opts.Truncation,
		Instruction: opts.Instruction, Priority: opts.Priority, RequestId: requestID}, nil
}

// invalidArgument is a refusal by the client itself (nothing was sent): the message leads with
// the parameter, as the server's refusals lead with the field.
func invalidArgument(field, problem string) *Error {
	return &Error{Code: codes.InvalidArgument, Message: field + ": " + problem,
		FieldViolations: []FieldViolation{{Field: field, Description: problem}}}
}

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoolingTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_TASK_UNSPECIFIED: _ClassVar[PoolingTask]
    POOLING_TASK_CLASSIFY: _ClassVar[PoolingTask]
    POOLING_TASK_TOKEN_CLASSIFY: _ClassVar[PoolingTask]
    POOLING_TASK_EMBED: _ClassVar[PoolingTask]
    POOLING_TASK_TOKEN_EMBED: _ClassVar[PoolingTask]

class PoolingType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_TYPE_UNSPECIFIED: _ClassVar[PoolingType]
    POOLING_TYPE_LAST: _ClassVar[PoolingType]
    POOLING_TYPE_ALL: _ClassVar[PoolingType]
    POOLING_TYPE_CLS: _ClassVar[PoolingType]
    POOLING_TYPE_MEAN: _ClassVar[PoolingType]
    POOLING_TYPE_STEP: _ClassVar[PoolingType]

class TruncationSide(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_SIDE_UNSPECIFIED: _ClassVar[TruncationSide]
    TRUNCATION_SIDE_LEFT: _ClassVar[TruncationSide]
    TRUNCATION_SIDE_RIGHT: _ClassVar[TruncationSide]

class ScoreMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_METHOD_UNSPECIFIED: _ClassVar[ScoreMethod]
    SCORE_METHOD_CROSS_ENCODER: _ClassVar[ScoreMethod]
    SCORE_METHOD_DECODER_RERANKER: _ClassVar[ScoreMethod]
    SCORE_METHOD_EMBEDDING_COSINE: _ClassVar[ScoreMethod]
POOLING_TASK_UNSPECIFIED: PoolingTask
POOLING_TASK_CLASSIFY: PoolingTask
POOLING_TASK_TOKEN_CLASSIFY: PoolingTask
POOLING_TASK_EMBED: PoolingTask
POOLING_TASK_TOKEN_EMBED: PoolingTask
POOLING_TYPE_UNSPECIFIED: PoolingType
POOLING_TYPE_LAST: PoolingType
POOLING_TYPE_ALL: PoolingType
POOLING_TYPE_CLS: PoolingType
POOLING_TYPE_MEAN: PoolingType
POOLING_TYPE_STEP: PoolingType
TRUNCATION_SIDE_UNSPECIFIED: TruncationSide
TRUNCATION_SIDE_LEFT: TruncationSide
TRUNCATION_SIDE_RIGHT: TruncationSide
SCORE_METHOD_UNSPECIFIED: ScoreMethod
SCORE_METHOD_CROSS_ENCODER: ScoreMethod
SCORE_METHOD_DECODER_RERANKER: ScoreMethod
SCORE_METHOD_EMBEDDING_COSINE: ScoreMethod

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class EncodeInput(_message.Message):
    __slots__ = ("text", "token_ids", "conversation")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    conversation: Conversation
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class PoolingParams(_message.Message):
    __slots__ = ("pooling_type", "use_activation", "normalize", "dimensions", "step_tag_id", "returned_token_ids")
    POOLING_TYPE_FIELD_NUMBER: _ClassVar[int]
    USE_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_TAG_ID_FIELD_NUMBER: _ClassVar[int]
    RETURNED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    pooling_type: PoolingType
    use_activation: bool
    normalize: bool
    dimensions: int
    step_tag_id: int
    returned_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pooling_type: _Optional[_Union[PoolingType, str]] = ..., use_activation: bool = ..., normalize: bool = ..., dimensions: _Optional[int] = ..., step_tag_id: _Optional[int] = ..., returned_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Truncation(_message.Message):
    __slots__ = ("truncate_prompt_tokens", "side")
    TRUNCATE_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    truncate_prompt_tokens: int
    side: TruncationSide
    def __init__(self, truncate_prompt_tokens: _Optional[int] = ..., side: _Optional[_Union[TruncationSide, str]] = ...) -> None: ...

class FloatTensor(_message.Message):
    __slots__ = ("shape", "values")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "num_sequences", "reused_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    num_sequences: int
    reused_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., num_sequences: _Optional[int] = ..., reused_tokens: _Optional[int] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_seconds", "compute_seconds", "total_seconds")
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_seconds: float
    compute_seconds: float
    total_seconds: float
    def __init__(self, queue_seconds: _Optional[float] = ..., compute_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("task", "inputs", "pooling", "truncation", "add_special_tokens", "priority", "request_id", "chat_options")
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHAT_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    task: PoolingTask
    inputs: _containers.RepeatedCompositeFieldContainer[EncodeInput]
    pooling: PoolingParams
    truncation: Truncation
    add_special_tokens: bool
    priority: int
    request_id: str
    chat_options: ChatOptions
    def __init__(self, task: _Optional[_Union[PoolingTask, str]] = ..., inputs: _Optional[_Iterable[_Union[EncodeInput, _Mapping]]] = ..., pooling: _Optional[_Union[PoolingParams, _Mapping]] = ..., truncation: _Optional[_Union[Truncation, _Mapping]] = ..., add_special_tokens: bool = ..., priority: _Optional[int] = ..., request_id: _Optional[str] = ..., chat_options: _Optional[_Union[ChatOptions, _Mapping]] = ...) -> None: ...

class EncodeResult(_message.Message):
    __slots__ = ("index", "data", "num_tokens", "truncated", "pooled_positions", "reused_tokens")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    POOLED_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: FloatTensor
    num_tokens: int
    truncated: bool
    pooled_positions: _containers.RepeatedScalarFieldContainer[int]
    reused_tokens: int
    def __init__(self, index: _Optional[int] = ..., data: _Optional[_Union[FloatTensor, _Mapping]] = ..., num_tokens: _Optional[int] = ..., truncated: bool = ..., pooled_positions: _Optional[_Iterable[int]] = ..., reused_tokens: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("request_id", "model", "task", "results", "usage", "timing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    task: PoolingTask
    results: _containers.RepeatedCompositeFieldContainer[EncodeResult]
    usage: Usage
    timing: Timing
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., task: _Optional[_Union[PoolingTask, str]] = ..., results: _Optional[_Iterable[_Union[EncodeResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class RewardRequest(_message.Message):
    __slots__ = ("inputs", "pooling", "truncation", "priority", "request_id")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[EncodeInput]
    pooling: PoolingParams
    truncation: Truncation
    priority: int
    request_id: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[EncodeInput, _Mapping]]] = ..., pooling: _Optional[_Union[PoolingParams, _Mapping]] = ..., truncation: _Optional[_Union[Truncation, _Mapping]] = ..., priority: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RewardResponse(_message.Message):
    __slots__ = ("request_id", "model", "results", "usage", "timing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    results: _containers.RepeatedCompositeFieldContainer[EncodeResult]
    usage: Usage
    timing: Timing
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[EncodeResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class PolicyText(_message.Message):
    __slots__ = ("tokenizer", "text", "token_ids")
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    tokenizer: str
    text: str
    token_ids: TokenIds
    def __init__(self, tokenizer: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("messages", "response", "rendered")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    response: PolicyText
    rendered: PolicyText
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., response: _Optional[_Union[PolicyText, _Mapping]] = ..., rendered: _Optional[_Union[PolicyText, _Mapping]] = ...) -> None: ...

class ChatGroup(_message.Message):
    __slots__ = ("prompt", "responses", "group_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    responses: _containers.RepeatedCompositeFieldContainer[PolicyText]
    group_id: str
    def __init__(self, prompt: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., responses: _Optional[_Iterable[_Union[PolicyText, _Mapping]]] = ..., group_id: _Optional[str] = ...) -> None: ...

class ChatRewardRequest(_message.Message):
    __slots__ = ("conversations", "chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message", "truncation", "pooling", "priority", "request_id", "groups")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_KWARGS_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_FINAL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    chat_template: str
    chat_template_kwargs: _struct_pb2.Struct
    add_generation_prompt: bool
    continue_final_message: bool
    truncation: Truncation
    pooling: PoolingParams
    priority: int
    request_id: str
    groups: _containers.RepeatedCompositeFieldContainer[ChatGroup]
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., chat_template: _Optional[str] = ..., chat_template_kwargs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., add_generation_prompt: bool = ..., continue_final_message: bool = ..., truncation: _Optional[_Union[Truncation, _Mapping]] = ..., pooling: _Optional[_Union[PoolingParams, _Mapping]] = ..., priority: _Optional[int] = ..., request_id: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[ChatGroup, _Mapping]]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class StepScore(_message.Message):
    __slots__ = ("position", "score", "label_scores")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_SCORES_FIELD_NUMBER: _ClassVar[int]
    position: int
    score: float
    label_scores: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, position: _Optional[int] = ..., score: _Optional[float] = ..., label_scores: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class ChatRewardResult(_message.Message):
    __slots__ = ("index", "score", "label_scores", "step_scores", "num_tokens", "truncated", "group_index", "response_index", "group_id", "reused_tokens")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_SCORES_FIELD_NUMBER: _ClassVar[int]
    STEP_SCORES_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    GROUP_INDEX_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    label_scores: _containers.RepeatedCompositeFieldContainer[LabelScore]
    step_scores: _containers.RepeatedCompositeFieldContainer[StepScore]
    num_tokens: int
    truncated: bool
    group_index: int
    response_index: int
    group_id: str
    reused_tokens: int
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., label_scores: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., step_scores: _Optional[_Iterable[_Union[StepScore, _Mapping]]] = ..., num_tokens: _Optional[int] = ..., truncated: bool = ..., group_index: _Optional[int] = ..., response_index: _Optional[int] = ..., group_id: _Optional[str] = ..., reused_tokens: _Optional[int] = ...) -> None: ...

class ChatRewardResponse(_message.Message):
    __slots__ = ("request_id", "model", "results", "usage", "timing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    results: _containers.RepeatedCompositeFieldContainer[ChatRewardResult]
    usage: Usage
    timing: Timing
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ChatRewardResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DefaultPooling(_message.Message):
    __slots__ = ("task", "pooling_type")
    TASK_FIELD_NUMBER: _ClassVar[int]
    POOLING_TYPE_FIELD_NUMBER: _ClassVar[int]
    task: PoolingTask
    pooling_type: PoolingType
    def __init__(self, task: _Optional[_Union[PoolingTask, str]] = ..., pooling_type: _Optional[_Union[PoolingType, str]] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "architecture", "tasks", "labels", "max_model_len", "dtype", "hidden_size", "vocab_size", "has_chat_template", "chat_template_sha256", "tokenizer_sha256", "server_version", "default_pooling", "is_causal", "policy_tokenizers", "stream_max_in_flight")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POOLING_FIELD_NUMBER: _ClassVar[int]
    IS_CAUSAL_FIELD_NUMBER: _ClassVar[int]
    POLICY_TOKENIZERS_FIELD_NUMBER: _ClassVar[int]
    STREAM_MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    model: str
    architecture: str
    tasks: _containers.RepeatedScalarFieldContainer[PoolingTask]
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_model_len: int
    dtype: str
    hidden_size: int
    vocab_size: int
    has_chat_template: bool
    chat_template_sha256: str
    tokenizer_sha256: str
    server_version: str
    default_pooling: _containers.RepeatedCompositeFieldContainer[DefaultPooling]
    is_causal: bool
    policy_tokenizers: _containers.RepeatedCompositeFieldContainer[PolicyTokenizerInfo]
    stream_max_in_flight: int
    def __init__(self, model: _Optional[str] = ..., architecture: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[PoolingTask, str]]] = ..., labels: _Optional[_Iterable[str]] = ..., max_model_len: _Optional[int] = ..., dtype: _Optional[str] = ..., hidden_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., has_chat_template: bool = ..., chat_template_sha256: _Optional[str] = ..., tokenizer_sha256: _Optional[str] = ..., server_version: _Optional[str] = ..., default_pooling: _Optional[_Iterable[_Union[DefaultPooling, _Mapping]]] = ..., is_causal: bool = ..., policy_tokenizers: _Optional[_Iterable[_Union[PolicyTokenizerInfo, _Mapping]]] = ..., stream_max_in_flight: _Optional[int] = ...) -> None: ...

class PolicyTokenizerInfo(_message.Message):
    __slots__ = ("name", "tokenizer_sha256", "chat_template_sha256", "vocab_size", "shares_vocab", "parses_rendered")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARES_VOCAB_FIELD_NUMBER: _ClassVar[int]
    PARSES_RENDERED_FIELD_NUMBER: _ClassVar[int]
    name: str
    tokenizer_sha256: str
    chat_template_sha256: str
    vocab_size: int
    shares_vocab: bool
    parses_rendered: bool
    def __init__(self, name: _Optional[str] = ..., tokenizer_sha256: _Optional[str] = ..., chat_template_sha256: _Optional[str] = ..., vocab_size: _Optional[int] = ..., shares_vocab: bool = ..., parses_rendered: bool = ...) -> None: ...

class StreamRewardOptions(_message.Message):
    __slots__ = ("chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message", "truncation", "pooling", "priority", "max_in_flight")
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_KWARGS_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_FINAL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    chat_template: str
    chat_template_kwargs: _struct_pb2.Struct
    add_generation_prompt: bool
    continue_final_message: bool
    truncation: Truncation
    pooling: PoolingParams
    priority: int
    max_in_flight: int
    def __init__(self, chat_template: _Optional[str] = ..., chat_template_kwargs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., add_generation_prompt: bool = ..., continue_final_message: bool = ..., truncation: _Optional[_Union[Truncation, _Mapping]] = ..., pooling: _Optional[_Union[PoolingParams, _Mapping]] = ..., priority: _Optional[int] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class StreamItem(_message.Message):
    __slots__ = ("id", "conversation", "group_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    conversation: Conversation
    group_id: str
    def __init__(self, id: _Optional[str] = ..., conversation: _Optional[_Union[Conversation, _Mapping]] = ..., group_id: _Optional[str] = ...) -> None: ...

class StreamRewardRequest(_message.Message):
    __slots__ = ("options", "items")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    options: StreamRewardOptions
    items: _containers.RepeatedCompositeFieldContainer[StreamItem]
    def __init__(self, options: _Optional[_Union[StreamRewardOptions, _Mapping]] = ..., items: _Optional[_Iterable[_Union[StreamItem, _Mapping]]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "retry_after_seconds")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_seconds: float
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_seconds: _Optional[float] = ...) -> None: ...

class StreamRewardResponse(_message.Message):
    __slots__ = ("id", "result", "error", "timing")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    id: str
    result: ChatRewardResult
    error: ItemError
    timing: Timing
    def __init__(self, id: _Optional[str] = ..., result: _Optional[_Union[ChatRewardResult, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ChatOptions(_message.Message):
    __slots__ = ("chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message")
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_KWARGS_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_FINAL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    chat_template: str
    chat_template_kwargs: _struct_pb2.Struct
    add_generation_prompt: bool
    continue_final_message: bool
    def __init__(self, chat_template: _Optional[str] = ..., chat_template_kwargs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., add_generation_prompt: bool = ..., continue_final_message: bool = ...) -> None: ...

class ScoreInput(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("query", "documents", "top_n", "truncation", "instruction", "priority", "request_id")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    query: ScoreInput
    documents: _containers.RepeatedCompositeFieldContainer[ScoreInput]
    top_n: int
    truncation: Truncation
    instruction: str
    priority: int
    request_id: str
    def __init__(self, query: _Optional[_Union[ScoreInput, _Mapping]] = ..., documents: _Optional[_Iterable[_Union[ScoreInput, _Mapping]]] = ..., top_n: _Optional[int] = ..., truncation: _Optional[_Union[Truncation, _Mapping]] = ..., instruction: _Optional[str] = ..., priority: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("index", "score", "logit", "num_tokens", "truncated")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    logit: float
    num_tokens: int
    truncated: bool
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., logit: _Optional[float] = ..., num_tokens: _Optional[int] = ..., truncated: bool = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("request_id", "model", "method", "results", "usage", "timing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    method: ScoreMethod
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    usage: Usage
    timing: Timing
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., method: _Optional[_Union[ScoreMethod, str]] = ..., results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

"""Domain errors of the services; each transport maps them once (gRPC status, OpenAI JSON)."""


class LLMPoolError(Exception):
    """Base of the errors a person can act on; the message says what to do."""


class NotFoundError(LLMPoolError):
    pass


class AlreadyExistsError(LLMPoolError):
    pass


class InvalidArgumentError(LLMPoolError):
    pass


class PermissionDeniedError(LLMPoolError):
    pass


class FailedPreconditionError(LLMPoolError):
    pass


class UnavailableError(LLMPoolError):
    pass

"""serving.errors.failure: the one mapping of an exception to what a gRPC client receives."""

import logging

import grpc

from netc.errors import UserError
from netc.serving.errors import MAX_MESSAGE, InvalidRequest, ModelNotFound, failure


def test_a_serving_error_keeps_its_code_and_message():
    error = ModelNotFound("no model 'lenet'; did you mean 'lenet5'?")
    assert failure(error, "ModelInfer") == (
        grpc.StatusCode.NOT_FOUND,
        "no model 'lenet'; did you mean 'lenet5'?",
    )


def test_any_other_user_error_is_the_request_s_fault():
    assert failure(UserError("cannot read labels_file"), "RepositoryModelLoad") == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "cannot read labels_file",
    )


def test_a_bug_is_internal_names_the_call_and_is_logged(caplog):
    try:
        raise KeyError("scores")
    except KeyError as exc:
        error = exc
    with caplog.at_level(logging.ERROR, logger="netc.serving"):
        code, message = failure(error, "Classify")
    assert code == grpc.StatusCode.INTERNAL
    assert message == "internal error in Classify: KeyError: 'scores'"
    (record,) = caplog.records
    assert record.getMessage() == "internal error in Classify" and record.exc_info[1] is error


def test_a_long_message_is_cut_to_fit_the_trailer(caplog):
    code, message = failure(InvalidRequest("x" * 10 * MAX_MESSAGE), "ModelInfer")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(message) < MAX_MESSAGE + 20 and message.endswith("(message cut)")
    assert not caplog.records  # a user's mistake is not logged as a bug

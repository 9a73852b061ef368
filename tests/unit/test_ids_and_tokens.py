import uuid

from capstan.auth.tokens import api_key_id, digest, is_session_token, new_api_key, new_session_token
from capstan.ids import uuid7


def test_uuid7_is_version_7_and_sorts_by_creation() -> None:
    ids = [uuid7() for _ in range(200)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)


def test_an_api_key_carries_its_id_and_only_its_hash_is_kept() -> None:
    key = new_api_key()
    assert api_key_id(key.plaintext) == key.key_id
    assert key.key_hash == digest(key.plaintext) != key.plaintext
    # Malformed tokens: tests/contract/vectors.json, shared with the gateway.


def test_session_tokens_are_told_apart_from_keys() -> None:
    token = new_session_token()
    assert is_session_token(token)
    assert api_key_id(token) is None
    assert not is_session_token(new_api_key().plaintext)

"""Accounts: bcrypt-hashed passwords, roles, and refusals phrased for a person."""
import pytest

from labeling import accounts as acc


def test_password_is_checked_against_a_bcrypt_hash_never_stored_in_clear(db):
    r = acc.set_user(db, "nurse.ann", "correct horse", site="ward-3")
    assert r == {"ok": True, "name": "nurse.ann", "role": "annotator", "site": "ward-3", "site_only": False,
                 "updated": False}
    stored = db.scalar("SELECT password_hash FROM annotators WHERE name = 'nurse.ann'")
    assert stored.startswith("$2") and "correct horse" not in stored
    assert acc.check_password(db, "nurse.ann", "correct horse")
    assert not acc.check_password(db, "nurse.ann", "correct hors")
    assert not acc.check_password(db, "nurse.ann", "")
    assert not acc.check_password(db, "nobody", "correct horse")
    assert not acc.check_password(db, "nurse.ann", "x" * 100)          # over-long: False, not an exception


def test_updating_an_account_changes_password_role_and_site(db):
    acc.set_user(db, "boss", "first-pass", role="admin")
    r = acc.set_user(db, "boss", "second-pass", role="annotator", site="plant-b")
    assert r["updated"] is True
    assert not acc.check_password(db, "boss", "first-pass") and acc.check_password(db, "boss", "second-pass")
    users = acc.list_users(db)
    assert [(u["name"], u["role"], u["site"]) for u in users] == [("boss", "annotator", "plant-b")]
    assert "password_hash" not in users[0]
    assert acc.get_user(db, "boss")["role"] == "annotator" and acc.get_user(db, "ghost") is None


@pytest.mark.parametrize("name,password,role,message", [
    ("", "secret1", "annotator", "needs a name"),
    ("a b", "secret1", "annotator", "may only use"),
    ("<script>", "secret1", "annotator", "may only use"),
    ("ann", "short", "annotator", "at least 6"),
    ("ann", "é" * 40, "annotator", "at most 72 bytes"),
    ("ann", "secret1", "root", "annotator or admin"),
])
def test_bad_accounts_are_refused_with_a_sentence(db, name, password, role, message):
    with pytest.raises(ValueError, match=message):
        acc.set_user(db, name, password, role=role)
    assert acc.list_users(db) == []

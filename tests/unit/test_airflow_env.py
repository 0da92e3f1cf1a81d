"""The embedded Airflow's secrets: made once, kept in 0600 files, never shown twice."""

from __future__ import annotations

import os
import stat

import pytest

pytestmark = pytest.mark.unit


def test_the_embedded_airflow_gets_a_stable_fernet_key_from_a_private_file():
    from cryptography.fernet import Fernet

    from riverdelta.airflow_env import airflow_env
    from riverdelta.settings import settings

    key = airflow_env()["AIRFLOW__CORE__FERNET_KEY"]
    token = Fernet(key.encode()).encrypt(b"connection password")
    assert Fernet(airflow_env()["AIRFLOW__CORE__FERNET_KEY"].encode()).decrypt(token)
    mode = os.stat(settings().airflow_home / "fernet_key").st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_the_admin_password_is_shown_once_then_only_where_it_is_kept():
    from riverdelta import airflow_env, airflow_stack

    shown = airflow_env.passwords_file().with_name(".shown")
    shown.unlink(missing_ok=True)
    first = airflow_stack.login_line()
    assert airflow_env.admin_password() in first and "shown once" in first
    again = airflow_stack.login_line()
    assert airflow_env.admin_password() not in again
    assert again == f"login admin, password in {airflow_env.passwords_file()} (mode 0600)"

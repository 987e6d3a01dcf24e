"""Passwords: the policy a new one must meet, and bcrypt hashing.

A password lives only in the request that carries it: it is hashed at once and
never returned, logged or put in a trace.
"""

import bcrypt

MIN_LENGTH, MAX_LENGTH = 8, 128


def policy_problems(password: str) -> list[str]:
    """What ``password`` lacks, in words; empty when it meets the policy."""
    problems = []
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        problems.append(f"must be {MIN_LENGTH} to {MAX_LENGTH} characters")
    if not any(c.isupper() for c in password):
        problems.append("needs an upper-case letter")
    if not any(c.islower() for c in password):
        problems.append("needs a lower-case letter")
    if not any(c.isdigit() for c in password):
        problems.append("needs a digit")
    if all(c.isalnum() for c in password):
        problems.append("needs a symbol")
    return problems


def hash_password(password: str, rounds: int) -> str:
    # bcrypt reads at most 72 bytes; the policy's 128 characters can exceed that,
    # so longer passwords are pre-truncated explicitly rather than by surprise.
    secret = password.encode("utf-8")[:72]
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds)).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    return bcrypt.checkpw(password.encode("utf-8")[:72], password_hash.encode("ascii"))

"""Helpers for running wove payloads inside other systems' workers."""

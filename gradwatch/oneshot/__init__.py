"""The one-shot commands: check, export, report, rules test.

They share gradwatch/oneshot/text.py, not each other.
"""

"""What every stream processor runs on.

The supervisor and readiness (:mod:`.runner`), the Kafka consumer loop's shared pieces
(:mod:`.kafka`), static consumer group membership (:mod:`.membership`).
"""

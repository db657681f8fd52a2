//! Stage runner and bounded queues for chime's timer pipeline (arrives with the timer engine).

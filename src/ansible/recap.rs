//! Parsing `PLAY RECAP` lines and the first failed task out of the output.

"""Code that generated scripts carry verbatim (``accelopt.codegen`` copies these files).

Each module here imports the standard library, torch and the modules before it here only (a
script carries them in ``codegen.PORTABLE``'s order), and accelopt runs the same code: a script
computes, compiles and captures what a study measured because it is the same source, not a
rewrite of it.

``script`` is the script's own code (loading, the accelerators, the execution mode, ``main``),
carried last, below the header codegen renders; accelopt never imports it, and it imports
diffusers and numpy as the scripts do.
"""

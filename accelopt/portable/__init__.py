"""Code that generated scripts carry verbatim (``accelopt.codegen`` copies these files).

Each module here imports the standard library and torch only, never accelopt, and accelopt
runs the same code: a script computes, compiles and captures what a study measured because it
is the same source, not a rewrite of it.
"""

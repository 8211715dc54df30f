"""Qt-free code of the TSFMSegmentation module.

client.py, wire.py and backend_process.py import no slicer, qt or vtk and run under plain pytest;
the other files work on MRML nodes through the slicer-core API.
"""

"""Task functions importable by the jobs (pickled by reference, so the job needs no cloudpickle)."""


def trivial(x):
    return x


def double(item):
    return item * 2

"""Weave templates: reusable tasks, inline overrides (sync and async blocks), inheritance."""

import asyncio

import pytest

from wove import Weave, weave


class Pipeline(Weave):
    @Weave.do
    def load(self):
        return [1, 2, 3]

    @Weave.do("load")
    def scale(self, item, factor):
        return item * factor

    @Weave.do(retries=2)
    def total(self, scale):
        return sum(scale)


class Extended(Pipeline):
    @Weave.do
    def report(self, total):
        return f"total={total}"


class Overriding(Pipeline):
    @Weave.do
    def load(self):
        return [10]


def test_template_tasks_run():
    with weave(Pipeline, factor=2) as w:
        pass
    assert w.result.load == [1, 2, 3]
    assert w.result.scale == [2, 4, 6]
    assert w.result.total == 12


def test_inline_override_in_sync_block():
    with weave(Pipeline, factor=1) as w:
        @w.do
        def load():
            return [5, 5]

    assert w.result.load == [5, 5]
    assert w.result.total == 10


def test_inline_override_in_async_block():
    async def main():
        async with weave(Pipeline, factor=3) as w:
            @w.do
            async def load():
                return [1, 1]
        return w.result

    result = asyncio.run(main())
    assert result.load == [1, 1]
    assert result.total == 6


def test_inline_tasks_can_extend_a_template():
    with weave(Pipeline, factor=1) as w:
        @w.do
        def doubled_total(total):
            return total * 2

    assert w.result.doubled_total == 12
    assert w.result.final == 12


def test_inline_override_inherits_template_options():
    attempts = []
    with weave(Pipeline, factor=1) as w:
        @w.do
        def total(scale):
            attempts.append(1)
            if len(attempts) < 3:
                raise ConnectionError("flaky")
            return sum(scale)

    assert w.result.total == 6
    assert len(attempts) == 3, "the override keeps the template's retries=2"


def test_subclass_inherits_template_tasks():
    with weave(Extended, factor=10) as w:
        pass
    assert w.result.total == 60
    assert w.result.report == "total=60"


def test_subclass_overrides_template_task():
    with weave(Overriding, factor=2) as w:
        pass
    assert w.result.load == [10]
    assert w.result.total == 20


def test_template_methods_receive_self():
    class WithState(Weave):
        greeting = "hello"

        @Weave.do
        def greet(self, name):
            return f"{self.greeting} {name}"

    with weave(WithState, name="ada") as w:
        pass
    assert w.result.greet == "hello ada"


def test_template_task_errors_follow_error_mode():
    class Broken(Weave):
        @Weave.do
        def bad(self):
            raise ValueError("template failure")

    with pytest.raises(ValueError, match="template failure"), weave(Broken):
        pass


def test_instantiating_a_template_outside_a_weave_raises_type_error():
    with pytest.raises(TypeError):
        Pipeline()
    with pytest.raises(TypeError):
        Extended()


def test_template_map_only_option_on_unmapped_method_is_value_error():
    with pytest.raises(ValueError, match="workers"):
        class Bad(Weave):
            @Weave.do(workers=3)
            def plain(self):
                return 1

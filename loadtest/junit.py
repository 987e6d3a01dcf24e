"""The split verdict as JUnit XML, the report format every CI system shows.

One test case per check the verifier made — the sample-ratio-mismatch test, the
equivalence test, the per-pod test of each version, the stickiness test — plus
the canary endpoint's health when the caller judged it. A check that found a
problem, or could not conclude, is a failure whose message is the verdict's own
reasons, so the CI page says why in words.
"""

from xml.etree import ElementTree

from loadtest.verifier import Verdict


def verdict_junit(verdict: Verdict, health: tuple[bool, str] | None = None) -> str:
    """``health`` is (healthy, one line saying why) when the caller judged it."""
    reasons = " ".join(verdict.reasons)
    cases: list[tuple[str, str | None]] = []  # (name, failure message or None)
    if verdict.srm is not None:
        cases.append(("sample-ratio mismatch",
                      reasons if verdict.srm.mismatch else None))
    if verdict.sequential is not None:  # the sequential run's own mismatch test
        cases.append(("sample-ratio mismatch (sequential)",
                      reasons if verdict.sequential.status == "mismatch" else None))
    margin = f"{verdict.margin * 100:g}"
    # Verified means within the margin, by TOST or, in sequential mode, by the
    # confidence sequence; anything else fails this case with the verdict's reasons.
    passed = verdict.status == "verified"
    cases.append((f"{verdict.canary} share within ±{margin} points of {verdict.expected}",
                  None if passed else f"{verdict.status}: {reasons}"))
    for finding in verdict.pods:
        cases.append((f"pods of {finding.version} share evenly",
                      finding.message if finding.problem else None))
    if verdict.stickiness is not None:
        cases.append(("no sticky traffic",
                      verdict.stickiness.message if verdict.stickiness.sticky else None))
    if health is not None:
        healthy, why = health
        cases.append(("canary endpoint healthy", None if healthy else why))

    suite = ElementTree.Element("testsuite", name="canary split", tests=str(len(cases)),
                                failures=str(sum(message is not None for _, message in cases)))
    for name, message in cases:
        case = ElementTree.SubElement(suite, "testcase", classname="canarylab.split", name=name)
        if message is not None:
            ElementTree.SubElement(case, "failure", message=message).text = message
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def analysis_junit(analysis) -> str:
    """The canary analysis (``loadtest.analysis.Analysis``) as its own test suite: one
    case per check; a check that failed, or lacks data, is a failure with its reason."""
    suite = ElementTree.Element("testsuite", name="canary analysis",
                                tests=str(len(analysis.checks)),
                                failures=str(sum(c.status != "pass" for c in analysis.checks)))
    for check in analysis.checks:
        case = ElementTree.SubElement(suite, "testcase", classname="canarylab.analysis",
                                      name=f"{check.name} ({check.threshold})")
        if check.status != "pass":
            message = f"{check.status}: {check.reason}"
            ElementTree.SubElement(case, "failure", message=message).text = message
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def junit_document(*suites: str) -> str:
    """Several ``<testsuite>`` documents (from the functions above) as one JUnit file."""
    if len(suites) == 1:
        return suites[0]
    root = ElementTree.Element("testsuites")
    for suite in suites:
        root.append(ElementTree.fromstring(suite))
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

#!/bin/bash
# ipmi_sim's chassis_control program for the e2e tests' virtual BMC
# (vbmc_test.go). ipmi_sim runs it as
#   chassis-control.sh 0x20 get power|boot ...
#   chassis-control.sh 0x20 set power 0|1 | reset 1 | boot pxe|default|... | shutdown 1 | identify I F
# and waits for it; an IPMI client retransmits after about a second and
# ipmi_sim then runs it again, so it must be quick: it hands its arguments
# to the test's VM controller (TCP on 127.0.0.1:$VBMC_CONTROL_PORT in the
# lab's namespace) and prints the answer ("parm:value" lines for get, an
# error otherwise), whose last line "exit N" is its exit status.
exec 3<>"/dev/tcp/127.0.0.1/${VBMC_CONTROL_PORT:?}" || { echo "chassis control: the test's controller is unreachable"; exit 1; }
printf '%s\n' "$*" >&3
while IFS= read -r -t 5 line <&3; do
	case $line in
	"exit "*) exit "${line#exit }" ;;
	*) printf '%s\n' "$line" ;;
	esac
done
echo "chassis control: no answer from the test's controller"
exit 1

#include "textflag.h"

// func cloneExec(args *cloneArgs, size uintptr, steps, end uintptr, st *childState) (pid, errno uintptr)
//
// clone3(args, size); the child, which shares the caller's memory and
// runs on the stack args gives it, makes the system calls of the steps
// from steps up to end, in order, and nothing else: it touches no Go
// state and calls no Go code. A failed step (but one whose flags say
// that it may fail, mayFail), or one that returned other than 1 where it
// must (wantOne), is recorded in st (its errno and at), and the child
// exits with status 127. With CLONE_VFORK the caller resumes once the
// child has executed another program or exited.
TEXT ·cloneExec(SB),NOSPLIT|NOFRAME,$0-56
	MOVQ	args+0(FP), DI
	MOVQ	size+8(FP), SI
	MOVQ	steps+16(FP), R12
	MOVQ	end+24(FP), R13
	MOVQ	st+32(FP), BX
	MOVQ	$435, AX // clone3
	SYSCALL
	TESTQ	AX, AX
	JEQ	child
	CMPQ	AX, $0xfffffffffffff001
	JLS	parent
	MOVQ	$-1, pid+40(FP)
	NEGQ	AX
	MOVQ	AX, errno+48(FP)
	RET
parent:
	MOVQ	AX, pid+40(FP)
	MOVQ	$0, errno+48(FP)
	RET

child:
	CMPQ	R12, R13
	JCC	nosteps
next:
	MOVQ	0(R12), AX
	MOVQ	8(R12), DI
	MOVQ	16(R12), SI
	MOVQ	24(R12), DX
	MOVQ	32(R12), R10
	MOVQ	40(R12), R8
	MOVQ	48(R12), R9
	SYSCALL
	MOVQ	56(R12), CX
	CMPQ	AX, $0xfffffffffffff001
	JLS	ok
	TESTQ	$1, CX // mayFail
	JNE	done
	JMP	failed
ok:
	TESTQ	$2, CX // wantOne
	JEQ	done
	CMPQ	AX, $1
	JEQ	done
	MOVQ	$0, AX // a short read or write: no error number
	JMP	failed
done:
	ADDQ	$64, R12
	CMPQ	R12, R13
	JCS	next
nosteps:
	// The last step executes another program; it returned.
	MOVQ	$0, AX
failed:
	NEGQ	AX
	MOVQ	AX, 0(BX)
	MOVQ	R12, 8(BX)
exit:
	MOVQ	$231, AX // exit_group
	MOVQ	$127, DI
	SYSCALL
	JMP	exit

# kvmpage TCG stub (GNU as, x86-64, AT&T syntax): the guest code of the `tcg` oracle.
#
# Assembled by `python -m kvmpage.tcg.build` with the same --defsym constants as the KVM agent
# (kvmpage/machine/layout.py and protocol.py), into kvmpage/tcg/stub.bin.
#
# Unicorn runs QEMU's TCG but does not deliver exceptions through the guest's IDT: it reports
# them to the host (UC_HOOK_INTR). So this stub has no exception handlers and no ring
# transitions of its own except one `iretq` into ring 3; the host (kvmpage.tcg.machine) starts
# each loop at the right privilege level, catches every fault, writes it into the command record
# and resumes the loop. The same bytes are mapped twice, as supervisor and as user pages, so a
# loop runs from a page its CPL may execute (SMEP) and never needs ring 0 while in ring 3.
#
# The records are the KVM agent's (kvmpage/machine/protocol.py): 64 bytes, command in the first
# half, result in the second.

        .text
        .code64

.macro BASE reg
        lea     0(%rip), \reg
        shr     $39, \reg
        shl     $39, \reg
.endm

header:
        .ascii  "KVMPTCG1"
        .long   probe_loop - header
        .long   read_insn - header
        .long   write_insn - header
        .long   call_insn - header
        .long   stop - header
        .long   service_loop - header
        .long   enter_user - header
        .long   calib_gp - header
        .long   cpuid_insn - header
        .long   cr4_or - header
        .long   stub_end - header

# ---------------------------------------------------------------------------------------------
# probes: rsi = the first record (the view this CPL may read and write), r8d = OP_CPL3 in ring 3
# and 0 in ring 0, rsp = a stack of this CPL. Runs consecutive probes of its own CPL and stops
# (the host's `until` address) at anything else. A fault is the host's business: it records it
# and resumes here with rsi on the next record.
# ---------------------------------------------------------------------------------------------
probe_loop:
        mov     C_OP(%rsi), %eax
        sub     %r8d, %eax
        cmp     $OP_READ, %eax
        jne     1f
        mov     C_ADDR(%rsi), %rdx
read_insn:
        mov     (%rdx), %rax
        mov     %rax, R_VALUE(%rsi)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     probe_loop
1:      cmp     $OP_WRITE, %eax
        jne     2f
        mov     C_ADDR(%rsi), %rdx
        mov     C_ARG(%rsi), %rcx
write_insn:
        mov     %rcx, (%rdx)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     probe_loop
2:      cmp     $OP_FETCH, %eax
        jne     stop
        mov     C_ADDR(%rsi), %rdx
call_insn:
        call    *%rdx
        mov     %rax, R_VALUE(%rsi)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     probe_loop
stop:
        hlt

# ---------------------------------------------------------------------------------------------
# services (ring 0 only): rsi = the first record (supervisor view). Runs consecutive services
# and stops at `stop` at anything else. Each writes its control register back into R_VALUE.
# ---------------------------------------------------------------------------------------------
service_loop:
        mov     C_OP(%rsi), %eax
        mov     C_ADDR(%rsi), %rdx
        mov     C_ARG(%rsi), %rcx
        cmp     $OP_INVLPG, %eax
        jne     1f
        invlpg  (%rdx)
        jmp     s_ok
1:      cmp     $OP_LOAD_CR3, %eax
        jne     1f
        mov     %rcx, %cr3
        mov     %cr3, %rax
        jmp     s_value
1:      cmp     $OP_WRITE_PHYS, %eax
        jne     1f
        BASE    %rax
        movabs  $PHYSMAP_OFF, %rdi
        add     %rdi, %rax
        mov     %rcx, (%rax,%rdx)
        jmp     s_ok
1:      cmp     $OP_READ_PHYS, %eax
        jne     1f
        BASE    %rax
        movabs  $PHYSMAP_OFF, %rdi
        add     %rdi, %rax
        mov     (%rax,%rdx), %rax
        jmp     s_value
1:      cmp     $OP_SET_WP, %eax
        jne     1f
        mov     %cr0, %rax
        btr     $16, %rax
        test    %rcx, %rcx
        jz      2f
        bts     $16, %rax
2:      mov     %rax, %cr0
        mov     %cr0, %rax
        jmp     s_value
1:      cmp     $OP_SET_SMEP, %eax
        jne     1f
        mov     %cr4, %rax
        btr     $20, %rax
        test    %rcx, %rcx
        jz      2f
        bts     $20, %rax
2:      mov     %rax, %cr4
        mov     %cr4, %rax
        jmp     s_value
1:      cmp     $OP_SET_SMAP, %eax
        jne     1f
        mov     %cr4, %rax
        btr     $21, %rax
        test    %rcx, %rcx
        jz      2f
        bts     $21, %rax
2:      mov     %rax, %cr4
        mov     %cr4, %rax
        jmp     s_value
1:      cmp     $OP_SET_AC, %eax
        jne     1f
        pushfq
        pop     %rax
        btr     $18, %rax
        test    %rcx, %rcx
        jz      2f
        bts     $18, %rax
2:      push    %rax
        popfq                                   # AC stays set for the following ring-0 probes
        pushfq
        pop     %rax
        jmp     s_value
1:      cmp     $OP_SET_NXE, %eax
        jne     stop
        mov     %rcx, %rdi                      # rdmsr/wrmsr need ecx, eax and edx
        mov     $MSR_EFER, %ecx
        rdmsr
        btr     $11, %eax
        test    %rdi, %rdi
        jz      2f
        bts     $11, %eax
2:      wrmsr
        rdmsr
        shl     $32, %rdx
        or      %rdx, %rax
s_value:
        mov     %rax, R_VALUE(%rsi)
s_ok:
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     service_loop

# ring 0 -> ring 3: rsp points at an iretq frame the host wrote (RIP, CS, RFLAGS, RSP, SS)
enter_user:
        iretq

# calibration (the host finds where Unicorn keeps the exception's error code): loading DS with
# selector dx, beyond the GDT's limit, raises #GP with that selector as its error code
calib_gp:
        mov     %dx, %ds
        hlt

# the host profile asks the CPU itself: CPUID (eax, ecx in, four registers out) and whether a
# CR4 bit sticks (rdx: the bits to set; rax: CR4 read back)
cpuid_insn:
        cpuid
        hlt
cr4_or:
        mov     %cr4, %rax
        or      %rdx, %rax
        mov     %rax, %cr4
        mov     %cr4, %rax
        hlt

        .balign 16
stub_end:
